"""The queue's other backend: every run a Slurm job (``EFFNET_BACKEND=slurm``), watched until it ends.

Why ``sbatch`` directly and not submitit (both were read; submitit is the usual Python way): a run here is
already a command that checkpoints on SIGTERM and resumes bit for bit (``python -m effnet.train --config
job.json --out RUN --resume``), so submitit's main gifts (pickling a Python callable to the node, its own
checkpoint-and-resubmit protocol) would be bypassed, while its state reporting needs ``sacct``, which many
small clusters (and the test cluster) lack, and it unpickles files from the shared folder on the compute
nodes, which a shared class server must not trust. ``sbatch`` gives a plain script in each batch's folder
that a researcher can read and submit by hand, job arrays, ``--signal`` and ``--requeue`` as Slurm documents
them, and ``squeue``'s pending reasons and nodes; and no new dependency.

How a run lives on Slurm:

- ``submit`` writes ``<root>/.slurm/<batch>/job.sbatch`` for a batch of runs (one job, or a job array when
  there are several) and records each run's ``slurm_job_id`` in its status.json.
- The script checks that the node sees the run's folder (the checkpoints folder must be on a filesystem the
  compute nodes share; a node that cannot see it ends the job with code 3, and ``sync`` says so), then starts
  the trainer with ``srun`` (one task, or N nodes x G tasks for a distributed run, ``torch.distributed``
  set up from Slurm's environment by ``effnet.train``).
- ``--signal=B:USR1@S`` warns the script S seconds before the time limit: it asks the trainer to
  checkpoint (SIGTERM), waits, and requeues the job, which then resumes. A preemption or ``scontrol
  requeue`` sends SIGTERM itself; the job comes back and resumes the same way.
- ``sync`` (the pages, ``jobs list`` and a small watcher process call it) merges Slurm's view into
  status.json: pending with its reason, running on its node, and a job that ended without a word from the
  trainer (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, CANCELLED, or gone) marked failed with that reason,
  never left "running".

Settings (environment variables, over a ``[slurm]`` table in ``$EFFNET_SLURM_CONFIG`` or
``.streamlit/secrets.toml``): ``EFFNET_SLURM_PARTITION``, ``_ACCOUNT``, ``_GPUS`` (per run; 0 asks for none),
``_CPUS`` (per task), ``_MEM`` (e.g. 16G), ``_TIME`` (minutes), ``_NODES`` and ``_TASKS`` (per node) for a
distributed run,
``_SIGNAL_S`` (the warning before the limit) and ``_EXTRA`` (raw sbatch options).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.base import files, locks
from effnet.base.processes import PROJECT, spawn_detached
from effnet.training import runs

BACKEND_ENV = "EFFNET_BACKEND"
BACKENDS = ("local", "slurm")
FOLDER = ".slurm"  # <root>/.slurm/<batch>/: the script, its run list, Slurm's own output
JOB_NAME = "effnet-lab"
# Slurm's end states that leave a run failed unless the trainer said otherwise first.
FAILED_STATES = ("TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "CANCELLED", "FAILED", "BOOT_FAIL",
                 "DEADLINE")
NO_FOLDER_EXIT = 3  # the script's exit code when the node cannot see the run's folder
WATCH_S = 5.0
WATCHER_LOCK = ".slurm-watcher.lock"


class SlurmError(RuntimeError):
    """Slurm could not be asked (not installed, controller down) or refused; the message says which."""


def backend() -> str:
    """Where the queue's runs train: ``local`` (this machine) or ``slurm``, by ``$EFFNET_BACKEND``."""
    chosen = os.environ.get(BACKEND_ENV, "local").strip().lower() or "local"
    if chosen not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}: must be one of {', '.join(BACKENDS)}, got {chosen!r}")
    return chosen


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    partition: str | None = None
    account: str | None = None
    gpus: int = 1  # per run (per task for a distributed run); 0: a CPU-only cluster
    cpus: int = 4  # per task
    mem: str | None = None  # e.g. "16G"
    minutes: int | None = None  # the time limit; the script requeues itself before it
    nodes: int = 1  # nodes of a distributed run
    tasks: int | None = None  # processes per node of a distributed run (default: its GPUs; CPU clusters: set it)
    signal_s: int = 120  # warning before the time limit (at most a tenth of it)
    extra: tuple[str, ...] = ()


def _table() -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the environment variables only
        return {}
    path = Path(os.environ.get("EFFNET_SLURM_CONFIG") or PROJECT / ".streamlit" / "secrets.toml")
    try:
        return tomllib.loads(path.read_text()).get("slurm", {}) if path.is_file() else {}
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ValueError(f"slurm: {path} is not readable TOML ({exc})") from exc


def settings() -> Settings:
    """The operator's Slurm settings: environment variables over the ``[slurm]`` table of the config file."""
    table = _table()
    given = {k: os.environ.get(f"EFFNET_SLURM_{k.upper()}", table.get(k)) for k in
             ("partition", "account", "gpus", "cpus", "mem", "time", "nodes", "tasks", "signal_s", "extra")}
    d = Settings()  # the defaults, written once (in the dataclass)
    try:
        values = Settings(partition=given["partition"] or None, account=given["account"] or None,
                          gpus=int(given["gpus"] if given["gpus"] is not None else d.gpus),
                          cpus=int(given["cpus"] or d.cpus), mem=str(given["mem"]) if given["mem"] else None,
                          minutes=int(given["time"]) if given["time"] else None, nodes=int(given["nodes"] or d.nodes),
                          tasks=int(given["tasks"]) if given["tasks"] else None,
                          signal_s=int(given["signal_s"] or d.signal_s),
                          extra=tuple(shlex.split(given["extra"]) if isinstance(given["extra"], str)
                                      else given["extra"] or ()))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"slurm settings: {exc}") from exc
    if values.gpus < 0 or values.cpus < 1 or values.nodes < 1 or (values.minutes is not None and values.minutes < 1):
        raise ValueError("slurm settings: GPUs must be 0 or more, CPUs, nodes and minutes 1 or more")
    return values


# ----------------------------------------------------------------------------- talking to Slurm
def _slurm(*command: str, timeout: float = 30.0) -> str:
    """A Slurm command's output; ``SlurmError`` saying why when Slurm is not here or refuses."""
    if shutil.which(command[0]) is None:
        raise SlurmError(f"Slurm is not installed here: no {command[0]} on PATH (EFFNET_BACKEND=slurm needs the "
                         "Slurm client commands)")
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"Slurm did not answer {command[0]} within {timeout:.0f} s (is the controller up?)") from exc
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise SlurmError(f"Slurm refused {command[0]}: {why[-1] if why else f'exit code {done.returncode}'}")
    return done.stdout


def reachable() -> str | None:
    """None when Slurm answers, else why not (for a page to say before anyone presses Start)."""
    try:
        _slurm("sinfo", "-h", "-o", "%P", timeout=15)
    except SlurmError as exc:
        return str(exc)
    return None


def _directives(s: Settings, n_runs: int, distributed: bool, batch: Path) -> list[str]:
    lines = [f"--job-name={JOB_NAME}", "--open-mode=append", "--requeue", "--export=ALL",
             f"--output={batch}/slurm-%A_%a.out" if n_runs > 1 else f"--output={batch}/slurm-%j.out"]
    if n_runs > 1:
        lines.append(f"--array=0-{n_runs - 1}")
    tasks = (s.tasks or max(1, s.gpus)) if distributed else 1
    lines += ([f"--nodes={s.nodes}", f"--ntasks-per-node={tasks}"] if distributed else ["--ntasks=1"])
    lines.append(f"--cpus-per-task={s.cpus}")
    if s.gpus > 0:
        lines.append(f"--gpus-per-task={1 if distributed else s.gpus}")
    if s.minutes is not None:
        lines.append(f"--time={s.minutes}")
        lines.append(f"--signal=B:USR1@{min(s.signal_s, max(10, 6 * s.minutes))}")
    else:
        lines.append(f"--signal=B:USR1@{s.signal_s}")
    lines += [f"--partition={s.partition}"] * bool(s.partition) + [f"--account={s.account}"] * bool(s.account)
    return [*lines, *s.extra]


def script(run_dirs: list[Path], s: Settings, distributed: bool, batch: Path) -> str:
    """The batch script of ``run_dirs`` (a job array when several): find the run, check the node sees it, train
    with srun, and before the time limit checkpoint and requeue."""
    header = "\n".join(f"#SBATCH {d}" for d in _directives(s, len(run_dirs), distributed, batch))
    listed = " ".join(shlex.quote(str(d)) for d in run_dirs)
    python = shlex.quote(sys.executable)
    return f"""#!/bin/bash
# Written by effnet-lab (effnet/slurm.py): one run per task of this job{' array' if len(run_dirs) > 1 else ''}.
{header}
set -u
runs=({listed})
run="${{runs[${{SLURM_ARRAY_TASK_ID:-0}}]}}"
if [ ! -d "$run" ] || [ ! -r "$run/job.json" ]; then
  echo "effnet-lab: node $(hostname) cannot see the run folder $run; the checkpoints folder must be on a \\
filesystem the compute nodes share" >&2
  exit {NO_FOLDER_EXIT}
fi
export PYTHONPATH={shlex.quote(str(PROJECT))}${{PYTHONPATH:+:$PYTHONPATH}}
export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
self="${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}${{SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}}"
requeue=0
trap 'requeue=1; kill -TERM "$step" 2>/dev/null' USR1  # the time limit is near: checkpoint, then come back
trap 'kill -TERM "$step" 2>/dev/null' TERM  # stopped or preempted: checkpoint (Slurm requeues a preempted job)
srun --kill-on-bad-exit=1 {python} -m effnet.train --config "$run/job.json" --out "$run" --resume \\
  >>"$run/log.txt" 2>&1 &
step=$!
code=0
while kill -0 "$step" 2>/dev/null; do wait "$step"; code=$?; done
if [ "$requeue" = 1 ]; then scontrol requeue "$self"; fi
exit "$code"
"""


def submit(run_dirs: list[Path], root: Path, distributed: bool = False) -> list[str]:
    """Submit ``run_dirs`` (queued runs) as one job or one job array; returns their Slurm job ids, also written into
    each run's status.json. ``SlurmError`` when Slurm is unreachable (nothing is submitted then)."""
    s = settings()
    batch = root / FOLDER / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    batch.mkdir(parents=True)
    path = batch / "job.sbatch"
    files.atomic_write_bytes(path, script(run_dirs, s, distributed, batch).encode())
    try:
        answer = _slurm("sbatch", "--parsable", str(path)).strip().split(";")[0]
    except SlurmError:
        shutil.rmtree(batch, ignore_errors=True)
        raise
    ids = [f"{answer}_{i}" for i in range(len(run_dirs))] if len(run_dirs) > 1 else [answer]
    for run_dir, job_id in zip(run_dirs, ids, strict=True):
        status = files.read_json(run_dir / runs.STATUS) or {}
        files.write_json(run_dir / runs.STATUS, {**status, "state": "queued", "slurm_job_id": job_id,
                                                 "slurm_batch": batch.name, "slurm_state": "PENDING"})
    ensure_watcher(root)
    return ids


@dataclass(frozen=True)
class JobState:
    state: str  # Slurm's: PENDING, RUNNING, COMPLETED, TIMEOUT, ...
    reason: str
    node: str


def states(job_ids: list[str]) -> dict[str, JobState]:
    """What Slurm says of ``job_ids`` (ended jobs too, while the controller remembers them); a job it does not
    know is absent. All the lab's jobs are listed at once (by name): asking for an unknown id would make squeue
    refuse the whole question."""
    if not job_ids:
        return {}
    out = _slurm("squeue", "-h", "-r", "-t", "all", "--name", JOB_NAME, "-o", "%i|%T|%r|%N")
    found, wanted = {}, set(job_ids)
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0] in wanted:
            found[parts[0]] = JobState(parts[1], parts[2], parts[3])
    return found


def detail(status: dict[str, Any]) -> str | None:
    """A Slurm run's state for people: "pending (Resources)", "running on node7", "ended: TIMEOUT"; None when the
    run is not a Slurm job."""
    if not status.get("slurm_job_id"):
        return None
    job, state = status["slurm_job_id"], status.get("slurm_state") or "PENDING"
    if state == "PENDING":
        reason = status.get("slurm_reason")
        return f"Slurm job {job}: pending" + (f" ({reason})" if reason and reason != "None" else "")
    if state in ("RUNNING", "COMPLETING"):
        return f"Slurm job {job}: running on {status.get('slurm_nodes') or status.get('node') or '?'}"
    return f"Slurm job {job}: {state.lower()}"


# ----------------------------------------------------------------------------- stop, and watching
def stop(info: runs.RunInfo) -> str:
    """Cancel a pending job; ask a running one's trainer to checkpoint and exit (SIGTERM to its step)."""
    job = info.status["slurm_job_id"]
    if info.state == "queued":
        _slurm("scancel", job)
        files.write_json(info.path / runs.STATUS, {**info.status, "state": "stopped", "slurm_state": "CANCELLED"})
        return "stopped"
    _slurm("scancel", "--signal=TERM", job)
    return "stopping"


def _ended_reason(job: JobState | None, batch: Path | None) -> str:
    if job is None:
        return ("the Slurm job is gone without an end (neither squeue nor the trainer says how it ended: the "
                "controller forgot it, or it was removed)")
    why = f"Slurm ended the job: {job.state}" + (f" ({job.reason})" if job.reason not in ("None", "") else "")
    tail = ""
    if batch is not None:
        outs = sorted(batch.glob("slurm-*.out"))
        tail = "\n".join(b.read_text(errors="replace")[-1500:] for b in outs[-1:] if b.is_file()).strip()
    if "cannot see the run folder" in tail:
        return tail.splitlines()[-1]
    return why + (f"\nSlurm's output:\n{tail}" if tail else "")


def sync(root: str | os.PathLike | None = None) -> int:
    """Merge Slurm's view into the status of every Slurm run not yet ended; returns how many are still active."""
    root = runs.checkpoints_dir(root)
    watched = [i for i in runs.list_runs(root) if not i.damaged and i.on_slurm
               and (i.pending or _maybe_requeued(i))]
    if not watched:
        return 0
    try:
        found = states([i.status["slurm_job_id"] for i in watched])
    except SlurmError:
        return len(watched)  # Slurm unreachable for a moment: say nothing rather than something wrong
    with locks.exclusive(root / locks.QUEUE_LOCK):
        for info in watched:
            _merge(info.path, found.get(info.status["slurm_job_id"]), root)
    return sum(1 for i in watched if (found.get(i.status["slurm_job_id"]) or JobState("GONE", "", "")).state in ALIVE)


WAITING = ("PENDING", "REQUEUED", "CONFIGURING", "SUSPENDED")  # Slurm has the job, not yet (or not now) running
RUNNING = ("RUNNING", "COMPLETING")
ALIVE = WAITING + RUNNING


def _maybe_requeued(info: runs.RunInfo) -> bool:
    """A run the trainer stopped without anyone pressing Stop: the time limit or a preemption, so Slurm may have it
    queued again (``_merge`` finds out)."""
    return (info.state == "stopped" and "stop_requested" not in (info.job or {})
            and info.status.get("slurm_state") in (None, *ALIVE))


def _requeued(status: dict[str, Any], job: JobState) -> dict[str, Any]:
    """The one "requeued" rule: it ran (or checkpointed at the time limit), and Slurm has queued it again."""
    return {"state": "queued", "slurm_state": "PENDING", "slurm_reason": f"requeued; {job.reason}",
            "slurm_requeues": int(status.get("slurm_requeues") or 0) + 1}


def _merged(status: dict[str, Any], job: JobState | None, asked_to_stop: bool, batch: Path | None) -> dict[str, Any]:
    """status.json after Slurm's word on the job: what the trainer said first, then Slurm's state decides."""
    ours, theirs = status.get("state"), job.state if job is not None else "GONE"
    if ours == "stopped":
        if job is not None and theirs in ALIVE and not asked_to_stop:
            return status | _requeued(status, job)  # checkpointed for the time limit or a preemption: it resumes
        # Stopped, and Slurm has not queued it again: it stays stopped (and can be resumed).
        return status | ({"slurm_state": theirs} if status.get("slurm_state") in ALIVE else {})
    if ours in runs.ENDED:
        return status  # the trainer has said how it ended: that stands
    if job is not None and theirs in WAITING:
        if ours in runs.ACTIVE:
            return status | _requeued(status, job)
        again = "requeued; " if status.get("slurm_requeues") else ""
        return status | {"slurm_state": "PENDING", "slurm_reason": again + job.reason}
    if job is not None and theirs in RUNNING:  # the trainer writes its node list itself once it runs
        return status | {"slurm_state": "RUNNING"} | ({} if status.get("slurm_nodes") else {"slurm_nodes": job.node})
    if theirs == "COMPLETED" and ours not in runs.ACTIVE:
        return status | {"state": "failed", "slurm_state": theirs,
                         "error": "the Slurm job ended before the trainer started: " + _ended_reason(job, batch)}
    if theirs in (*FAILED_STATES, "COMPLETED", "GONE"):
        return status | {"state": "failed", "slurm_state": theirs, "error": _ended_reason(job, batch)}
    return status


def _merge(run_dir: Path, job: JobState | None, root: Path) -> None:
    """Write Slurm's word on a run's job into its status.json (only when something changed)."""
    asked_to_stop = "stop_requested" in (files.read_json(run_dir / runs.JOB) or {})
    with locks.exclusive(run_dir / runs.STATUS_LOCK):  # the trainer may be writing it right now
        status = files.read_json(run_dir / runs.STATUS) or {}
        batch = root / FOLDER / str(status["slurm_batch"]) if status.get("slurm_batch") else None
        new = _merged(status, job, asked_to_stop, batch)
        if new != status:
            files.write_json(run_dir / runs.STATUS, new)


def ensure_watcher(root: Path) -> None:
    """Start the watcher (``python -m effnet.slurm watch``) unless one holds the lock already."""
    if not locks.is_held(root / WATCHER_LOCK):
        spawn_detached(["effnet.slurm", "watch", "--root", str(root)], root / ".slurm-watcher.log")


def watch(root: Path) -> None:
    """Sync every few seconds while any Slurm run is not ended, so an end is recorded even when no page is open."""
    with locks.exclusive(root / WATCHER_LOCK, wait=False) as mine:
        if not mine:
            return
        while sync(root):
            time.sleep(WATCH_S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet.slurm", description="the Slurm backend's watcher")
    p.add_argument("command", choices=("watch", "sync", "script"))
    p.add_argument("--root", help="the checkpoints folder (default: $EFFNET_CHECKPOINTS or ./checkpoints)")
    args = p.parse_args(argv)
    root = runs.checkpoints_dir(args.root).resolve()
    if args.command != "script" and not root.is_dir():  # never created here: a typo is not a new checkpoints folder
        p.error(f"--root: {root} is not a folder")
    if args.command == "watch":
        watch(root)
    elif args.command == "sync":
        print(f"{sync(root)} Slurm run(s) still active")
    else:
        print(script([root / "RUN"], settings(), False, root / FOLDER / "BATCH"))
    return 0

