"""Run folders written with the lab's own writers, without training: for pages and bookkeeping whose subject is
the numbers on disk, not the training that made them (training itself is tested where it is the subject)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from effnet.arch.scaling import ScalingSpec
from effnet.base import files
from effnet.training import runs
from effnet.training.config import TrainConfig


def row(epoch: int, val: float | None, test: float, **extra: Any) -> dict[str, Any]:
    """One metrics.jsonl line; losses follow the accuracies so charts have something to draw."""
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "train_top1": min(99.0, test + 5), "val_top1": val,
            "val_top5": None if val is None else min(100.0, val + 20), "test_top1": test,
            "test_top5": min(100.0, test + 20), "val_loss": None if val is None else 2.1 / epoch,
            "test_loss": 2.2 / epoch, "lr": 0.05, "epoch_seconds": 1.0, "images_per_second": 100.0, **extra}


def fake_run(root: Path, name: str, rows: list[dict[str, Any]], spec: ScalingSpec | None = None,
             state: str = "finished", weights: bool = False, job: dict[str, Any] | None = None,
             **config: Any) -> Path:
    """A run folder holding ``rows`` as its finished epochs (and a randomly initialised best.pt with ``weights``)."""
    spec = spec or ScalingSpec(phi=-4)
    train = TrainConfig(spec=spec, epochs=max(1, len(rows)), **config)
    run_dir = root / name
    run_dir.mkdir(parents=True)
    files.write_json(run_dir / runs.CONFIG, {"spec": spec.to_dict(), "train": train.to_dict()})
    runs.write_metrics(run_dir, rows)
    files.write_json(run_dir / runs.STATUS, {"state": state, "epoch": len(rows), "epochs": len(rows), "step": 1,
                                             "steps": 1, **({"pid": os.getpid(), "heartbeat": time.time()} if state == "running" else {})})
    if job is not None:
        files.write_json(run_dir / runs.JOB, {"config": train.to_dict(), "queued_at": 1, "generation": 1, **job})
    if weights:
        from effnet.arch.model import build_model
        from effnet.training.checkpoint import save_checkpoint

        save_checkpoint(run_dir / runs.BEST, {"model": build_model(spec).state_dict(), "spec": spec.to_dict(),
                                              "epoch": len(rows)})
    return run_dir
