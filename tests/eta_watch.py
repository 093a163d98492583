"""A real run's ETA against the time it then took: the test's check and bench/eta.py's numbers, one way of watching.

The status is read as the pages read it (``runs.progress``), every 20 ms, from the first epoch's end (when the
evaluation has been timed) to the finish."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from effnet.training import runs


@dataclass
class Watched:
    """What the ETA said after the first epoch and as the last evaluation began, and the time left each time."""

    after_first: runs.Progress
    after_first_left_s: float
    last_evaluation: runs.Progress
    last_evaluation_left_s: float

    @property
    def error(self) -> float:
        """(predicted - actual) / actual, after the first epoch."""
        return (self.after_first.eta_s - self.after_first_left_s) / self.after_first_left_s


def watch(proc: subprocess.Popen, out: Path, epochs: int) -> Watched:
    """Follow the trainer ``proc`` writing ``out`` until it ends; AssertionError if it fails or the moments to
    compare never showed."""
    first = last = None
    ended = None
    while proc.poll() is None:
        info = runs.read_run(out) if (out / runs.STATUS).is_file() else None
        s = info.status if info else {}
        if info and info.state == "running" and s.get("eval_s") is not None and first is None:
            first = (time.time(), runs.progress(info))
        if info and info.state == "running" and s.get("epoch") == epochs and s.get("phase") == "evaluating" \
                and last is None:
            last = (time.time(), runs.progress(info))
        if info and info.state == "finished":
            ended = time.time()
            break
        time.sleep(0.02)
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else "the run failed"
    assert first and last and ended, "the status never showed the first epoch's end, the last evaluation or the end"
    return Watched(first[1], ended - first[0], last[1], ended - last[0])
