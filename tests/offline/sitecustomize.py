"""Loaded by every Python process the tests start (``tests/offline`` is on their ``PYTHONPATH``): no network.

A test must never reach the internet (a download that happens to succeed would hide the offline path, and
CI must not depend on it). Only loopback and Unix sockets work; anything else fails at once with a message
naming the host, instead of hanging on a DNS lookup or a connection.
"""

import offline_guard

offline_guard.install()
