"""A set of runs trained to the end across restarts: how a notebook (or any script) uses the queue.

A free notebook GPU disconnects after a few hours and its kernel dies with it; the checkpoints survive on
Google Drive or in ``/kaggle/working``. Running the same cells again must then train nothing twice.
``ensure(configs, root)`` therefore matches each wanted config with the runs already in ``root`` (the same
spec and settings; where the data lives and the device may differ):

- a finished run is kept;
- a stopped run, or one whose process died with the old kernel (failed), resumes from its last checkpoint;
- a queued or running one is left alone (a runner outlives a restarted kernel);
- only what is missing is queued.

``wait`` follows the runs until none is active, reporting their progress to a callback (the notebook draws
progress bars with it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet.queue import jobs
from effnet.training import runs
from effnet.training.config import TrainConfig

POLL_S = 2.0
# Where a run lives and what it runs on may change between two sessions of the same notebook.
NOT_COMPARED = ("data_dir", "device")


@dataclass
class Plan:
    """Which run stands for each wanted config (``ids``, in order) and what ``ensure`` did with it."""

    ids: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # finished already
    resumed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # queued or running already
    queued: list[str] = field(default_factory=list)  # new

    def summary(self) -> str:
        return (f"{len(self.kept)} finished already, {len(self.resumed)} resumed, {len(self.waiting)} still "
                f"queued or running, {len(self.queued)} new")


def _key(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in NOT_COMPARED}


def _existing(root: Path) -> dict[str, runs.RunInfo]:
    """The queue's runs in ``root`` by their settings (the newest of equal ones)."""
    found: dict[str, runs.RunInfo] = {}
    for info in sorted(runs.list_runs(root), key=lambda i: i.queued_at):
        if info.from_queue and info.config is not None and not info.damaged:
            found[repr(_key(info.config))] = info
    return found


def ensure(configs: Sequence[TrainConfig], root: str | Path, labels: Sequence[str | None] | None = None) -> Plan:
    """Every config in ``configs`` finished, resumed, left running or queued (see the module's docstring)."""
    root = runs.checkpoints_dir(root).resolve()
    existing, plan = _existing(root), Plan()
    slots: list[str | None] = []
    for config in configs:
        info = existing.get(repr(_key(config)))
        if info is None:
            slots.append(None)
            continue
        slots.append(info.run_id)
        if info.state == "finished":
            plan.kept.append(info.run_id)
        elif jobs.resumable(info):
            jobs.resume(info.run_id, root)
            plan.resumed.append(info.run_id)
        elif info.pending:
            plan.waiting.append(info.run_id)
        else:  # failed before its first checkpoint (or damaged): nothing to continue from, so anew
            slots[-1] = None
    missing = [i for i, s in enumerate(slots) if s is None]
    if missing:
        wanted_labels = list(labels) if labels is not None else [None] * len(configs)
        new = jobs.submit_many([configs[i] for i in missing], root, [wanted_labels[i] for i in missing])
        for i, run_id in zip(missing, new, strict=True):
            slots[i] = run_id
        plan.queued += new
    plan.ids = [s for s in slots if s is not None]
    return plan


def wait(ids: Sequence[str], root: str | Path, report: Callable[[list[runs.RunInfo]], None] | None = None,
         poll_s: float = POLL_S) -> list[runs.RunInfo]:
    """Follow the runs ``ids`` until none is queued or running; ``report`` sees them at each look."""
    root = runs.checkpoints_dir(root).resolve()
    while True:
        infos = [runs.read_run(runs.run_path(root, run_id)) for run_id in ids]
        if report is not None:
            report(infos)
        if not any(i.pending for i in infos):
            return infos
        time.sleep(poll_s)
