"""Processes the lab starts and watches: detached helpers (the queue's runner, compressions) and who a pid is.

A status file names a pid, and on a shared server a status file is not trusted: before the lab signals a
process it checks, from ``/proc``, that the pid is one of its own for that run (``is_process_of``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]  # effnet/base/processes.py -> the project


def pid_alive(pid: object) -> bool:
    """Whether a process with ``pid`` runs (a zombie, exited but not reaped, does not)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def is_process_of(pid: object, module: str, *mentions: str) -> bool:
    """Whether ``pid`` runs ``python -m module`` with each of ``mentions`` somewhere in its arguments (a run's folder
    name, a compression's output folder)."""
    if not pid_alive(pid):
        return False
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return False
    return module in argv and all(any(m in a.rstrip("/") for a in argv) for m in mentions)


def spawn_detached(module_args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
    """``python -m <module_args>`` in its own session (it outlives the app page or process that started it),
    finding this project's code, its output appended to ``log_path``."""
    path = os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))
    with open(log_path, "ab") as log:
        subprocess.Popen([sys.executable, "-m", *module_args], cwd=PROJECT,
                         env={**os.environ, "PYTHONPATH": path, **(env or {})}, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


