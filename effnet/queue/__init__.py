"""The queue and its backends: runs submitted, started on local devices or Slurm, stopped, resumed, deleted.

``jobs`` (the queue and its runner), ``slurm`` (runs as sbatch jobs, Slurm's states merged into status.json),
``campaign`` (a batch of runs, e.g. B0-B7).

May import: effnet.base, effnet.arch, effnet.data, effnet.training, effnet.compression (a deleted run stops its compressions).
"""
