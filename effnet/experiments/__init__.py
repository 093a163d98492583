"""The study's experiments and their exchange: studies of many runs, and bundles.

``study`` (scaling methods at equal MACs, the alpha/beta/gamma grid: a list of runs plus study.json), ``bundle`` (a
run or a study as one zip, imported trusting nothing).

May import: every layer below: effnet.base, arch, data, training, analysis, compression, queue.
"""
