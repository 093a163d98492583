"""Training: one run from its config to its checkpoints, metrics and status, read top to bottom.

``config`` (every setting and its check), ``flags`` (the command-line flags for specs and settings), ``start``
(device, data split, first weights), ``step`` (one optimisation step), ``evaluate`` (top-1 with precise BN),
``progress`` (status.json with a heartbeat, live points), ``loop`` (the run), ``checkpoint``, ``measure`` (cost
estimates), ``devices`` and ``runs`` (a run folder as a record others read: its state vocabulary lives there).

May import: effnet.base, effnet.arch, effnet.data.
"""
