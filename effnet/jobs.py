"""Training runs as background jobs: submit, queue, list, stop, resume, delete.

State lives on disk under the checkpoints folder, so every app session (and the CLI) sees the
same truth, and runs survive the app rerunning or restarting:

- ``submit`` writes ``<root>/<run-id>/job.json`` (the training command line) and a "queued"
  status, then makes sure a *runner* is alive.
- The runner (``python -m effnet.jobs runner``) is a detached process that holds an exclusive
  ``flock`` on ``<root>/.runner.lock`` while it trains queued runs one at a time, oldest first,
  and exits when the queue is empty. Nobody starts it by hand; two Start presses at once still
  give one runner (the lock, not a check-then-act race), so one GPU never trains two runs.
- Queue transitions (submit, cancel, pick next) happen under ``<root>/.queue.lock``.
- Each run the runner starts holds ``<root>/.device.lock`` while it trains, so even a run orphaned
  by a killed runner never shares the device with the next one (the next one shows "waiting").
- A run whose process is gone, or whose heartbeat stopped, is reported as failed with the
  end of its log, never as running forever.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from effnet import runs
from effnet.data import data_dir
from effnet.profile import model_card
from effnet.train import DEVICE_LOCK_ENV, SCHEDULES, TrainConfig, config_to_argv

__all__ = ["SCHEDULES", "RunInfo", "TrainConfig", "delete", "list_runs", "progress", "resume", "stop", "submit"]

PROJECT_DIR = Path(__file__).resolve().parents[1]
ACTIVE = ("starting", "waiting", "loading data", "running")
HEARTBEAT_TIMEOUT_S = 60.0


def checkpoints_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$EFFNET_CHECKPOINTS``, else ``./checkpoints``."""
    return Path(path or os.environ.get("EFFNET_CHECKPOINTS") or "checkpoints")


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path``; yields False (without waiting) if ``blocking`` is off and it is taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class RunInfo:
    """One run as the app shows it."""

    run_id: str
    path: Path
    state: str  # queued, starting, waiting, loading data, running, stopped, finished, failed
    label: str
    config: dict[str, Any]
    status: dict[str, Any]
    error: str | None
    queued_at: int = 0  # ns; queue order (0 for runs started from the command line)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class Progress:
    fraction: float  # of the whole run, 0..1
    text: str
    eta_s: float | None


def progress(info: RunInfo) -> Progress:
    """Where a run is (epoch, step, phase) and, while it runs, when it should end."""
    s = info.status
    epochs, steps = int(s.get("epochs") or info.config.get("train", {}).get("epochs") or 1), int(s.get("steps") or 0)
    epoch, step = int(s.get("epoch") or 0), int(s.get("step") or 0)
    if info.state == "finished":
        return Progress(1.0, f"finished {epochs} epochs", None)
    if not steps or not epoch:
        return Progress(0.0, info.state, None)
    fraction = min(1.0, ((epoch - 1) + step / steps) / epochs)
    text = f"epoch {epoch}/{epochs} · step {step}/{steps}"
    if s.get("phase") == "evaluating":
        text += " · evaluating"
    eta = None
    if info.active and s.get("running_since"):
        done = fraction - float(s.get("start_fraction") or 0.0)
        elapsed = time.time() - float(s["running_since"])
        if done > 0.002 and elapsed > 1:
            eta = elapsed / done * (1 - fraction)
            text += f" · ETA {_duration(eta)}"
    return Progress(fraction, text, eta)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def log_tail(run_dir: Path, lines: int = 15) -> str:
    try:
        return "\n".join((run_dir / runs.LOG).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def read_run(run_dir: Path) -> RunInfo:
    """A run's state from its files, with dead processes detected."""
    status = runs.read_json(run_dir / runs.STATUS) or {}
    job = runs.read_json(run_dir / runs.JOB) or {}
    config = runs.read_json(run_dir / runs.CONFIG) or {}
    state = status.get("state", "queued" if job else "unknown")
    error = status.get("error")
    if state in ACTIVE:
        age = time.time() - float(status.get("heartbeat", 0) or 0)
        if not _pid_alive(status.get("pid")) or age > HEARTBEAT_TIMEOUT_S:
            state = "failed"
            why = "its process is gone" if not _pid_alive(status.get("pid")) else f"no heartbeat for {age:.0f} s"
            error = f"The training process died ({why}: killed, out of memory, or the machine restarted)."
            tail = log_tail(run_dir)
            if tail:
                error += "\nLast output:\n" + tail
    label = job.get("label") or _label(config.get("spec"))
    return RunInfo(run_dir.name, run_dir, state, label, config or job.get("config", {}), status, error,
                   int(job.get("queued_at", 0) or 0))


def _label(spec: dict[str, Any] | None) -> str:
    if not spec:
        return "?"
    from effnet.scaling import ScalingSpec

    try:
        return ScalingSpec.from_dict(spec).name
    except ValueError:
        return "?"


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """All runs under ``root``, oldest first (queue order for queued ones)."""
    root = checkpoints_dir(root)
    if not root.is_dir():
        return []
    found = [read_run(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
             and ((d / runs.JOB).exists() or (d / runs.CONFIG).exists())]
    return sorted(found, key=lambda r: (r.queued_at, r.run_id))


def available_memory_bytes(device: str) -> int:
    """Memory the run will have: the GPU's total, or this machine's RAM."""
    if device.startswith("cuda") or device == "auto":
        import torch

        if torch.cuda.is_available():
            index = int(device.split(":")[1]) if ":" in device else 0
            return int(torch.cuda.get_device_properties(index).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(config: TrainConfig) -> None:
    """Refuse a run whose estimated training memory exceeds the device's (analytic, from the card)."""
    card = model_card(config.model_spec)
    need = card.train_memory_bytes(config.batch_size)
    have = available_memory_bytes(config.device)
    if need > 0.9 * have:
        raise ValueError(
            f"batch_size: {card.spec.name} at batch {config.batch_size} needs about {need / 1024**3:.1f} GiB "
            f"to train, more than the {have / 1024**3:.1f} GiB available; lower the batch size or phi"
        )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


def submit(config: TrainConfig, root: str | os.PathLike | None = None, label: str | None = None,
           start_runner: bool = True) -> str:
    """Queue a training run; returns its run id.

    Everything is checked first (settings, spec, memory), so a refused run leaves no trace.
    """
    config.validate()
    check_fits(config)
    root = checkpoints_dir(root).resolve()
    label = label or config.model_spec.name
    if config.data_dir is None:  # the runner may start elsewhere: pin the data folder this process sees
        config = replace(config, data_dir=str(data_dir().resolve()))
    with _locked(root / ".queue.lock"):
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(label)}-{secrets.token_hex(2)}"
        run_dir = root / run_id
        run_dir.mkdir(parents=True)
        runs.write_json(run_dir / runs.JOB, {"argv": config_to_argv(config, run_dir), "label": label,
                                             "queued_at": time.time_ns(), "config": asdict(config)})
        runs.write_json(run_dir / runs.STATUS, {"state": "queued"})
    if start_runner:
        ensure_runner(root)
    return run_id


def resume(run_id: str, root: str | os.PathLike | None = None) -> None:
    """Queue a stopped or failed run again; it continues from its last checkpoint."""
    root = checkpoints_dir(root).resolve()
    run_dir = root / run_id
    with _locked(root / ".queue.lock"):
        info = read_run(run_dir)
        if info.active or info.state == "queued":
            raise ValueError(f"run {run_id} is already {info.state}")
        job = runs.read_json(run_dir / runs.JOB)
        if job is None:
            raise ValueError(f"run {run_id} was not started from the app; resume it with python -m effnet.train --resume")
        argv = [a for a in job["argv"] if a != "--resume"] + ["--resume"]
        runs.write_json(run_dir / runs.JOB, {**job, "argv": argv, "queued_at": time.time_ns()})
        runs.write_json(run_dir / runs.STATUS, {**info.status, "state": "queued", "error": None})
    ensure_runner(root)


def stop(run_id: str, root: str | os.PathLike | None = None) -> str:
    """Cancel a queued run, or ask a running one to checkpoint and exit (SIGTERM). Returns the new state."""
    root = checkpoints_dir(root).resolve()
    run_dir = root / run_id
    with _locked(root / ".queue.lock"):
        info = read_run(run_dir)
        if info.state == "queued":
            runs.write_json(run_dir / runs.STATUS, {**info.status, "state": "stopped"})
            return "stopped"
    if info.active:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info.status["pid"]), signal.SIGTERM)
        return "stopping"
    return info.state


def delete(run_id: str, root: str | os.PathLike | None = None, wait_s: float = 30.0) -> None:
    """Stop the run if needed, then remove its folder."""
    root = checkpoints_dir(root).resolve()
    run_dir = root / run_id
    if not run_dir.is_dir() or run_dir.parent != root:
        raise ValueError(f"no run {run_id!r} in {root}")
    stop(run_id, root)
    deadline = time.monotonic() + wait_s
    while read_run(run_dir).active:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not stop within {wait_s:.0f} s; try again")
        time.sleep(0.2)
    shutil.rmtree(run_dir)


def ensure_runner(root: Path) -> None:
    """Start a detached runner; if one already holds the lock, the new one exits at once."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")]))}
    with open(root / ".runner.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "effnet.jobs", "runner", "--root", str(root)], cwd=PROJECT_DIR,
                         env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True)


def _next_queued(root: Path) -> Path | None:
    queued = [r for r in list_runs(root) if r.state == "queued"]
    return queued[0].path if queued else None


def _start_next(root: Path) -> tuple[Path, subprocess.Popen] | None:
    """Under the queue lock: launch the oldest queued run and record its pid, or None if none is queued."""
    with _locked(root / ".queue.lock"):
        run_dir = _next_queued(root)
        if run_dir is None:
            return None
        job = runs.read_json(run_dir / runs.JOB) or {}
        with open(run_dir / runs.LOG, "ab") as log:
            env = {**os.environ, DEVICE_LOCK_ENV: str(root / ".device.lock")}
            proc = subprocess.Popen([sys.executable, "-m", "effnet.train", *job.get("argv", [])], cwd=PROJECT_DIR,
                                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        runs.write_json(run_dir / runs.STATUS, {"state": "starting", "pid": proc.pid, "heartbeat": time.time()})
        return run_dir, proc


def _finish(run_dir: Path, code: int) -> None:
    """After the process exits: make sure its status is final even if it could not write it itself."""
    status = runs.read_json(run_dir / runs.STATUS) or {}
    if status.get("state") not in ACTIVE and (code == 0 or status.get("state") == "failed"):
        return
    if code == -signal.SIGTERM:  # stopped before it could install its own handler
        runs.write_json(run_dir / runs.STATUS, {**status, "state": "stopped"})
        return
    tail = log_tail(run_dir)
    runs.write_json(run_dir / runs.STATUS, {**status, "state": "failed", "exit_code": code,
                                            "error": f"training exited with code {code}\n{tail}".strip()})


def run_queue(root: Path) -> None:
    """The runner's loop: while holding the runner lock, train queued runs one by one."""
    while True:
        with _locked(root / ".runner.lock", blocking=False) as mine:
            if not mine:
                return  # another runner is alive and will see our job
            while (started := _start_next(root)) is not None:
                run_dir, proc = started
                _finish(run_dir, proc.wait())
        # A job submitted while we were deciding to leave found the lock taken; look once more.
        with _locked(root / ".queue.lock"):
            if _next_queued(root) is None:
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effnet.jobs", description="training job queue")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("runner", help="train queued runs one at a time (started automatically)").add_argument(
        "--root", required=True)
    sub.add_parser("list", help="list runs and their states").add_argument("--root")
    args = parser.parse_args(argv)
    if args.command == "runner":
        run_queue(Path(args.root))
    else:
        for r in list_runs(args.root):
            print(f"{r.run_id:<48} {r.state:<10} {r.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
