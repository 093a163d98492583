"""Detached tasks (a training run, a compression): one lifecycle for both, read from the task's status.json.

The protocol, the same for every task:
- the task writes ``status.json`` with its ``state``, its ``pid`` and a ``heartbeat`` (a time) at least every
  ``HEARTBEAT_S`` while it lives (``effnet.training.progress.Status`` does both for trainers and compressions);
- whoever starts one writes ``{"state": "starting", "pid": None, "heartbeat": now}`` first: until the process says
  who it is (importing torch takes seconds), that heartbeat vouches for it for ``STARTUP_S``;
- it is **at work** while its state is not ended, its pid is alive and its heartbeat is at most
  ``HEARTBEAT_TIMEOUT_S`` old; otherwise it is lost (killed, out of memory, the machine restarted), which readers
  show as failed with the reason ``why_lost`` gives;
- it is **stopped** with SIGTERM (it checkpoints and exits), sent only to a pid that really runs the task's module
  for this task (a status file on a shared server is not trusted), then waited for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from effnet.base.processes import is_process_of, pid_alive

ENDED = ("stopped", "finished", "failed")
HEARTBEAT_S, HEARTBEAT_TIMEOUT_S, STARTUP_S = 5.0, 60.0, 60.0


def why_lost(status: dict[str, Any], now: float | None = None) -> str | None:
    """None while the task whose status this is is at work (or has ended); else why it is lost."""
    if status.get("state") in ENDED:
        return None
    age = (now or time.time()) - float(status.get("heartbeat", 0) or 0)
    if age < -HEARTBEAT_TIMEOUT_S:  # a status copied from elsewhere, or a wrong clock: a live pid proves nothing then
        return f"its heartbeat is {-age:.0f} s in the future (a copied run folder, or a wrong clock)"
    if status.get("pid") is None:
        return None if age < STARTUP_S else f"it never started (no process reported within {STARTUP_S:.0f} s)"
    if not pid_alive(status["pid"]):
        return "its process is gone"
    return None if age <= HEARTBEAT_TIMEOUT_S else f"no heartbeat for {age:.0f} s"


def at_work(status: dict[str, Any]) -> bool:
    """Whether the task has not ended and is not lost."""
    return status.get("state") not in ENDED and why_lost(status) is None


def signal_stop(status: dict[str, Any], module: str, *mentions: str) -> bool:
    """SIGTERM to the task's process, if its pid really runs ``python -m module`` with ``mentions`` (its folder);
    whether a signal was sent."""
    pid = status.get("pid")
    if not at_work(status) or not is_process_of(pid, module, *mentions):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return True


def wait_until(done: Callable[[], bool], wait_s: float, what: str) -> None:
    """Poll ``done`` until it holds; ``RuntimeError`` naming ``what`` after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not stop within {wait_s:.0f} s; try again")
        time.sleep(0.2)
