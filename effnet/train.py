"""``python -m effnet.train``: a training run from the command line.

This module is only the command line: flags (or ``--config job.json``) to a ``TrainConfig`` and a run folder, then
``effnet.training.loop.train``, whose refusals and failures become one line on stderr. The run itself reads top to
bottom in ``effnet.training.loop``; how it reports itself is ``effnet.training.progress``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.distributed as dist

from effnet.data.cifar import DataError
from effnet.training import runs
from effnet.training.checkpoint import CheckpointError
from effnet.training.config import TrainConfig
from effnet.training.flags import (
    add_spec_arguments,
    add_training_arguments,
    config_from_args,
    normalization_from_args,
    num_classes_from_args,
    spec_from_args,
)
from effnet.training.loop import failure, train
from effnet.training.start import RendezvousError, distributed_env

# With --config, the file is the whole config; only where to write and where to run may be given beside it.
CONFIG_COMPANIONS = ("--config", "--out", "--resume", "--device", "--data-dir")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m effnet.train",
                                description="Train a model on CIFAR-100 or your own images.")
    p.add_argument("--config", help="a JSON config (or a queue's job.json) instead of the flags below")
    add_spec_arguments(p, num_classes_default=None)
    add_training_arguments(p)
    p.add_argument("--out", required=True, help="run folder, e.g. checkpoints/my-run")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path, bool]:
    """(config, run folder, resume) from the flags, or from ``--config FILE`` plus ``--out``; the config validated
    (once per process: ``main`` tells ``train`` it is checked)."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        if args.config is not None:
            given = [a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")]
            extra = sorted(set(given) - set(CONFIG_COMPANIONS))
            if extra:
                raise ValueError(f"config: with --config, the file holds the settings; drop {', '.join(extra)}")
            config = TrainConfig.load(Path(args.config))
            config = config.replace(**{k: v for k, v in (("device", args.device), ("data_dir", args.data_dir))
                                       if v is not None})
        else:
            config = config_from_args(args, spec_from_args(args, num_classes=num_classes_from_args(args),
                                                           normalization=normalization_from_args(args)))
        config.validate()  # here, so a bad setting is a usage error (exit 2); train() is told not to check again
        out = _out_folder(args.out)
    except ValueError as exc:
        p.error(str(exc))
    return config, out, args.resume


def _out_folder(text: str) -> Path:
    """The run folder ``--out`` names: not empty (that would train into the current folder), not a file."""
    if not text.strip():
        raise ValueError("out: give the run's folder, e.g. --out checkpoints/my-run")
    out = Path(text)
    if out.name in runs.RESERVED:
        raise ValueError(f"out: {out.name!r} is a folder the lab itself uses (its studies); give the run another name")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} is a file, not a run folder")
    return out


def main(argv: list[str] | None = None) -> int:
    config, out, resume = parse_args(argv)
    rank = distributed_env()[1]
    try:
        train(config, out, resume, checked=True)
        if dist.is_initialized():
            dist.barrier()  # every rank done before any tears the group down (gloo aborted a rank that left first)
    except (DataError, ValueError, CheckpointError, RendezvousError) as exc:
        # Expected failures get one clear line; anything else keeps its traceback.
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:  # the disk or the folder: a line saying which, not a traceback
        if rank == 0:
            why = failure(exc)["error"] if failure(exc).get("disk_full") else f"cannot write {exc.filename or out}: " \
                f"{exc.strerror or exc}"
            print(f"error: {why}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
