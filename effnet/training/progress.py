"""How a run reports itself: status.json with a heartbeat, phase timing, live points."""

from __future__ import annotations

import collections
import contextlib
import math
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from effnet.base import files, tasks
from effnet.training import runs
from effnet.training.evaluate import evaluate

if TYPE_CHECKING:  # Live reads the run it reports on; the loop imports this module
    from effnet.training.loop import Run


class Status:
    """``status.json`` of a task (a run, a compression): updated by its work, refreshed by a heartbeat thread every
    ``tasks.HEARTBEAT_S`` (the protocol of ``effnet.base.tasks``)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / runs.STATUS
        self.enabled = enabled
        self.lock = threading.Lock()
        # The queue's generation stays: it tells the runner this status belongs to the run it started.
        kept = {k: v for k, v in (files.read_json(self.path) or {}).items()
                if k in ("generation", "slot", "slurm_job_id", "slurm_batch", "slurm_requeues", "step_s", "eval_s")}
        # (step_s and eval_s too: the pace measured before a resume carries the ETA until this process has its own.)
        self.fields: dict[str, Any] = {**kept, "state": "starting", "pid": os.getpid(), "started": time.time()}
        if os.environ.get("SLURM_JOB_ID"):  # a Slurm job: where it runs, for the pages (its pid is the node's)
            self.fields |= {"slurm_state": "RUNNING", "node": os.environ.get("SLURMD_NODENAME", "?"),
                            "slurm_nodes": os.environ.get("SLURM_JOB_NODELIST", "?")}
            if os.environ.get("EFFNET_SLURM_BATCH"):
                # The job says who it is (effnet.queue.slurm's script): right even when it started before sbatch's
                # answer was recorded, or when a resumed run's status still names the job before.
                array = os.environ.get("SLURM_ARRAY_TASK_ID")
                self.fields |= {"slurm_batch": os.environ["EFFNET_SLURM_BATCH"], "slurm_job_id":
                                f"{os.environ['SLURM_ARRAY_JOB_ID']}_{array}" if array else os.environ["SLURM_JOB_ID"]}
        self.last_write = 0.0
        self._stop = threading.Event()
        if enabled:
            threading.Thread(target=self._beat, daemon=True).start()

    def update(self, force: bool = True, **fields: Any) -> None:
        with self.lock:
            self.fields.update(fields)
            if fields.get("state") in runs.ENDED:
                self.fields["ended"] = time.time()
            if self.enabled and (force or time.time() - self.last_write > 1.0):
                self._write()

    def _write(self) -> None:
        self.fields["heartbeat"] = self.last_write = time.time()
        with runs.status_lock(self.path.parent):
            files.write_status(self.path, self.fields)

    def _beat(self) -> None:
        while not self._stop.wait(tasks.HEARTBEAT_S):
            with self.lock, contextlib.suppress(OSError):  # a full disk: the loop itself will report it
                self._write()

    def close(self) -> None:
        """Stop the heartbeat: after this, status.json changes only when the process says so."""
        self._stop.set()
        with self.lock:
            pass


class Stopwatch:
    """Seconds spent per phase ("train" steps, the whole "epoch"), carried across checkpoints.

    ``read()`` includes the phases still running, so a checkpoint taken mid-epoch stores the time
    so far and a resumed epoch reports its whole duration.
    """

    def __init__(self, totals: dict[str, float] | None = None) -> None:
        self.totals = {"train": 0.0, "epoch": 0.0, **(totals or {})}
        self._since: dict[str, float] = {}

    def start(self, phase: str) -> None:
        self._since[phase] = time.monotonic()

    def stop(self, phase: str) -> None:
        self.totals[phase] += time.monotonic() - self._since.pop(phase)

    def read(self) -> dict[str, float]:
        now = time.monotonic()
        return {k: v + (now - self._since[k] if k in self._since else 0.0) for k, v in self.totals.items()}



class Pace:
    """The two numbers a run's ETA rests on (``runs.progress``), measured by the trainer and kept in status.json:
    ``step_s``, the mean wall time between its last ``WINDOW`` steps, and ``eval_s``, the last end of an epoch's
    (precise BN, validation, test, checkpoints), which an ETA made of steps alone left out (it said "0 s" for the
    last epoch's 15-25 s). A mean, not a median: the ETA is a sum, and slow steps (a checkpoint, a validation
    slice) recur; a median under-predicted a loaded machine's runs by 20-40%. Two intervals are not a step's: a
    process's first (torch's lazy set-up, once) and the one across an epoch's end (``eval_s`` times that)."""

    WINDOW = 200

    def __init__(self) -> None:
        self.times: collections.deque[float] = collections.deque(maxlen=self.WINDOW)
        self.last: float | None = None
        self.between_epochs = False

    def evaluated(self) -> None:
        """An epoch's end is timed on its own (``eval_s``): the next step's interval does not include it."""
        self.between_epochs = True

    def stepped(self) -> dict[str, float]:
        """Note one more step; ``{"step_s": mean}`` once there is a measurement (else {}: what was carried over from
        before a resume stays, so the ETA does not jump)."""
        now = time.monotonic()
        if self.last is not None and not self.between_epochs:
            self.times.append(now - self.last)
        self.last, self.between_epochs = now, False
        return {"step_s": sum(self.times) / len(self.times)} if self.times else {}


class Diverged(ValueError):
    """The loss became NaN or infinite: the run fails saying so (never "finished" with NaN weights)."""


class Live:
    """Points within an epoch, so a class sees learning in the first minute, not when epoch 1 ends (``live.jsonl``).

    Every ~1/``POINTS`` of an epoch: the running training loss and top-1 over the steps since the last point.
    Runs of ``EARLY_EPOCHS`` epochs or fewer (class demos) also evaluate a validation slice of ``EARLY_IMAGES``
    every quarter of their first epoch, when the class is waiting for a first sign of learning (later epochs
    have their full evaluation at the end), on a measured copy of the model (``Run.measured_model``): the
    training state is not touched, so a resumed run replays bit for bit. The points are kept in the
    checkpoint, so after a resume the file holds each of them once.
    """

    POINTS, EARLY_EPOCHS, EARLY_IMAGES, EARLY_STEPS = 20, 5, 128, 20  # 128 images: a slice, for the first points

    def __init__(self, run: Run, rows: list[dict[str, Any]] | None = None) -> None:
        self.rows = list(rows or [])
        self.window = run._zero_acc()
        self.every = max(1, run.steps // self.POINTS)
        # An epoch of fewer than EARLY_STEPS steps is over in moments: its end-of-epoch evaluation is early enough.
        early = run.config.epochs <= self.EARLY_EPOCHS and len(run.data.val) > 0 and run.steps >= self.EARLY_STEPS
        self.quarters = {round(k * run.steps / 4) for k in (1, 2, 3)} if early else set()
        self.last_write = 0.0

    def after_step(self, run: Run) -> None:
        if run.step % self.every and (run.step not in self.quarters or run.epoch > 0):
            return
        seen = int(self.window["seen"].item())  # one host sync per point, not per step
        if seen:
            loss = self.window["loss"].item() / seen
            if not math.isfinite(loss):
                raise Diverged(f"training diverged: the loss became {loss} in epoch {run.epoch + 1}, step {run.step} "
                               f"(lower the learning rate, {run.config.lr:g}, or the weight decay)")
            self.rows.append({"epoch": run.epoch + 1, "step": run.step, "steps": run.steps, "train_loss": loss,
                              "train_top1": 100 * self.window["correct"].item() / seen})
            self.window = run._zero_acc()
        if run.step in self.quarters and run.epoch == 0 and run.main:
            run.status.update(phase="evaluating a validation slice")
            measured = run.measured_model(self.EARLY_IMAGES)
            val = evaluate(measured, run.data.val.take(torch.arange(min(self.EARLY_IMAGES, len(run.data.val)))),
                           run.config, run.amp)
            run.status.update(phase="train")
            self.rows.append({"epoch": run.epoch + 1, "step": run.step, "steps": run.steps, "val_top1": val["top1"],
                              "val_loss": val["loss"]})
        if run.main and time.monotonic() - self.last_write > 2.0:
            self.write(run)

    def write(self, run: Run) -> None:
        runs.write_metrics(run.out, self.rows, runs.LIVE)
        self.last_write = time.monotonic()


