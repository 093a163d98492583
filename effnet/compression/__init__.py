"""Compression of a finished run: int8 and pruned variants, each measured, and their background tasks.

``compress`` does the work in one process; ``compressions`` starts, watches and stops it from the app.

May import: effnet.base, effnet.arch, effnet.data, effnet.training.
"""
