"""Reading finished runs: tables, charts and class activation maps.

``results`` (the study's tables from run folders, chosen on validation), ``charts`` (accuracy vs size, curves),
``cam`` (six CAM methods, ROAD scores, the sanity check). Readers never need the queue.

May import: effnet.base, effnet.arch, effnet.data, effnet.training.
"""
