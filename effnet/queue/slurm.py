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
``.streamlit/secrets.toml``), each checked when read: ``EFFNET_SLURM_PARTITION``, ``_ACCOUNT``, ``_GPUS`` (per
run; default one where the partition has GPUs, else none), ``_CPUS`` (per task; default up to 4, what its nodes
have), ``_MEM`` (per node, e.g. 16G), ``_TIME`` (minutes), ``_NODES`` and ``_TASKS`` (per node) for a distributed
run, ``_MAX_PARALLEL`` (a job array's runs at once), ``_SIGNAL_S`` (the warning before the limit) and ``_EXTRA``
(raw sbatch options). ``request`` checks them against the partition before anything is written (``fit``).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
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
    gpus: int | None = None  # per run (a distributed run: one per task, and tasks per node default to it); None: one
    # where the partition has GPUs, else none
    cpus: int | None = None  # per task; None: up to DEFAULT_CPUS, as many as the partition's nodes have
    mem: str | None = None  # per node, e.g. "16G" (sbatch's --mem)
    minutes: int | None = None  # the time limit; the script requeues itself before it
    nodes: int = 1  # nodes of a distributed run
    tasks: int | None = None  # processes per node of a distributed run (default: its GPUs; CPU clusters: set it)
    signal_s: int = 120  # warning before the time limit (at most a tenth of it)
    max_parallel: int | None = None  # a job array's runs at once (sbatch's --array=0-N%M)
    extra: tuple[str, ...] = ()


DEFAULT_CPUS = 4  # per task, where the partition's nodes have them (data loading and augmentation threads)
# A partition or account name: what Slurm's names use; never a space, quote or newline (each would end the #SBATCH
# line it is written into, or start a shell line of its own).
NAME = re.compile(r"[A-Za-z0-9_.,+:@-]{1,128}")
MEM = re.compile(r"([0-9]{1,9})([KMGT]?)", re.IGNORECASE)  # sbatch's --mem: a number, megabytes unless a unit
MEM_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}


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


def _env(key: str) -> str:
    return f"EFFNET_SLURM_{key.upper()}"


def _whole(given: dict[str, Any], key: str, low: int, default: int | None) -> int | None:
    value = given[key]
    if value is None or str(value).strip() == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{_env(key)}: must be a whole number, got {str(value)!r}") from None
    if number < low:
        raise ValueError(f"{_env(key)}: must be {low} or more, got {number}")
    return number


def _name(given: dict[str, Any], key: str) -> str | None:
    value = str(given[key]).strip() if given[key] is not None else ""
    if value and not NAME.fullmatch(value):
        raise ValueError(f"{_env(key)}: must be a Slurm name (letters, digits, . _ - , + : @), got {value!r}")
    return value or None


def mem_mb(mem: str) -> float:
    """Megabytes of a --mem value ("16G", "4000", "512M")."""
    number, unit = MEM.fullmatch(mem).groups()
    return int(number) * MEM_MB[unit.upper()]


def _extra(value: Any) -> tuple[str, ...]:
    options = tuple(shlex.split(value) if isinstance(value, str) else value or ())
    for option in options:
        if not str(option).startswith("-") or any(c.isspace() for c in str(option)):
            raise ValueError(f"{_env('extra')}: sbatch options only, each starting with - and without spaces "
                             f"(a #SBATCH line ends at the first), got {str(option)!r}")
    return tuple(str(o) for o in options)


def settings() -> Settings:
    """The operator's Slurm settings: environment variables over the ``[slurm]`` table of the config file, each
    checked as it is read (``ValueError`` naming the variable): what is written into the batch script is only
    ever a number, a size or a Slurm name."""
    table = _table()
    given = {k: os.environ.get(_env(k), table.get(k)) for k in
             ("partition", "account", "gpus", "cpus", "mem", "time", "nodes", "tasks", "signal_s", "max_parallel",
              "extra")}
    mem = str(given["mem"]).strip() if given["mem"] not in (None, "") else None
    if mem is not None and not MEM.fullmatch(mem):
        raise ValueError(f"{_env('mem')}: a size per node like 16G or 16000M, got {mem!r}")
    d = Settings()  # the defaults, written once (in the dataclass)
    return Settings(partition=_name(given, "partition"), account=_name(given, "account"),
                    gpus=_whole(given, "gpus", 0, d.gpus), cpus=_whole(given, "cpus", 1, d.cpus), mem=mem,
                    minutes=_whole(given, "time", 1, d.minutes), nodes=_whole(given, "nodes", 1, d.nodes),
                    tasks=_whole(given, "tasks", 1, d.tasks), signal_s=_whole(given, "signal_s", 1, d.signal_s),
                    max_parallel=_whole(given, "max_parallel", 1, d.max_parallel), extra=_extra(given["extra"]))


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


# ----------------------------------------------------------------------------- what the partition can run
@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass(frozen=True)
class Partition:
    name: str  # one partition, or several as sbatch takes them ("a,b": the job runs in whichever starts it first)
    state: str  # UP, DOWN, DRAIN, INACTIVE (of several: UP when one is)
    max_minutes: int | None  # None: no limit
    max_nodes: int | None
    nodes: tuple[Node, ...]


def _fields(line: str) -> dict[str, str]:
    """``key=value`` pairs of one ``scontrol show -o`` line (values with spaces come back cut: none used here)."""
    return dict(re.findall(r"(\w+)=(\S*)", line))


def _minutes(limit: str) -> int | None:
    """Slurm's time limit (``UNLIMITED``, ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``) in minutes; None for no limit."""
    if limit.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes = parts[0], (parts[1] if len(parts) > 1 else 0)
    elif len(parts) == 3:  # HH:MM:SS (how scontrol writes it)
        hours, minutes = parts[0], parts[1]
    else:  # MM or MM:SS
        hours, minutes = 0, parts[0]
    return (int(days or 0) * 24 + hours) * 60 + minutes


def _gpus(gres: str) -> int:
    """GPUs in a node's ``Gres`` (``gpu:4``, ``gpu:a100:2(S:0-1)``, ``(null)``)."""
    return sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))


def _largest(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else max(values, default=None)


def partition(name: str | None) -> Partition:
    """The partition(s) runs go to (the cluster's default when ``name`` is None) and their nodes, from ``scontrol``
    (15 s at most per question); ``SlurmError`` when Slurm does not answer, ``ValueError`` for an unknown name."""
    listed = [_fields(line) for line in _slurm("scontrol", "show", "partition", "-o", timeout=15).splitlines()
              if line.strip()]
    wanted = name.split(",") if name else None
    chosen = [p for p in listed if (p.get("PartitionName") in wanted if wanted else p.get("Default") == "YES")]
    missing = sorted(set(wanted or ()) - {p.get("PartitionName") for p in chosen})
    if not chosen or missing:
        known = ", ".join(p.get("PartitionName", "?") for p in listed) or "none"
        raise ValueError(f"{_env('partition')}: " + (f"this cluster has no partition {missing[0]!r}" if wanted else
                         "this cluster has no default partition: set one") + f" (partitions: {known})")
    lists = " ".join(p["Nodes"] for p in chosen if p.get("Nodes") not in (None, "", "(null)"))
    names = set(_slurm("scontrol", "show", "hostnames", lists, timeout=15).split()) if lists else set()
    nodes = tuple(Node(f["NodeName"], int(f.get("CPUTot", 0)), int(f.get("RealMemory", 0)), _gpus(f.get("Gres", "")))
                  for f in (_fields(line) for line in
                            _slurm("scontrol", "show", "node", "-o", timeout=15).splitlines())
                  if f.get("NodeName") in names)
    states = [p.get("State", "UP") for p in chosen]
    return Partition(",".join(p["PartitionName"] for p in chosen), "UP" if "UP" in states else states[0],
                     _largest([_minutes(p.get("MaxTime", "UNLIMITED")) for p in chosen]),
                     _largest([None if p.get("MaxNodes", "UNLIMITED").upper() == "UNLIMITED" else int(p["MaxNodes"])
                               for p in chosen]), nodes)


def tasks_per_node(s: Settings, distributed: bool) -> int:
    """Processes per node: one for a single run; for a distributed run ``_TASKS``, else one per GPU asked."""
    return (s.tasks or max(1, s.gpus or 0)) if distributed else 1


def _refusal(s: Settings, part: Partition, distributed: bool, cpus: int, gpus: int) -> str:
    """Why no node of ``part`` can run one node's share of the request, naming the setting and the fix."""
    where, tasks = f"partition {part.name}", tasks_per_node(replace(s, gpus=gpus), distributed)
    per_node_gpus = tasks if distributed and gpus else gpus
    most_gpus, most_cpus = max(n.gpus for n in part.nodes), max(n.cpus for n in part.nodes)
    if per_node_gpus > most_gpus:
        if not most_gpus:
            fix = f"set {_env('gpus')}=0 to train on CPUs, or choose a partition with GPUs"
        else:
            fix = f"set {_env('tasks') if distributed else _env('gpus')}={most_gpus}"
        return f"{_env('gpus')}: asks {per_node_gpus} GPU(s) per node; {where}'s largest node has {most_gpus}: {fix}"
    if cpus * tasks > most_cpus:
        each = f" ({tasks} tasks x {cpus})" if tasks > 1 else ""
        fix = (f"set {_env('cpus')}={most_cpus // tasks}" if most_cpus >= tasks
               else f"set {_env('tasks')}={most_cpus} or fewer")
        return f"{_env('cpus')}: asks {cpus * tasks} CPUs per node{each}; {where}'s largest node has {most_cpus}: {fix}"
    most_mem = max(n.mem_mb for n in part.nodes)
    if s.mem is not None and mem_mb(s.mem) > most_mem:
        return (f"{_env('mem')}: asks {s.mem} per node; {where}'s largest node has {most_mem} MB: "
                f"set {_env('mem')}={most_mem}M or less")
    ask = f"{cpus * tasks} CPUs, {per_node_gpus} GPU(s)" + (f" and {s.mem}" if s.mem else "")
    if not distributed:
        return (f"{_env('cpus')}: no node of {where} has {ask} together: ask for less "
                f"({_env('cpus')}, {_env('gpus')}, {_env('mem')})")
    return (f"{_env('nodes')}: asks {s.nodes} nodes with {ask} each; {where} has fewer such nodes: set "
            f"{_env('nodes')} lower or ask for less per node")


def fit(s: Settings, part: Partition, distributed: bool) -> Settings:
    """``s`` with its defaults chosen for ``part`` (GPUs only where it has them, CPUs up to what its nodes have), or
    ``ValueError`` naming the setting when no node (no set of nodes, for a distributed run) of the partition could
    ever run it: Slurm would keep such a job pending for ever (PartitionConfig) or refuse it in its own words."""
    where = f"partition {part.name}"
    if part.state in ("DOWN", "DRAIN", "INACTIVE") or not part.nodes:
        why = f"is {part.state}" if part.nodes else "has no nodes"
        raise ValueError(f"{_env('partition')}: {where} {why}: no run can start there; choose another partition "
                         "or ask the cluster's administrator")
    gpus = (1 if any(n.gpus for n in part.nodes) else 0) if s.gpus is None else s.gpus
    tasks = tasks_per_node(replace(s, gpus=gpus), distributed)
    cpus = max(1, min(DEFAULT_CPUS, max(n.cpus for n in part.nodes) // tasks)) if s.cpus is None else s.cpus
    nodes = s.nodes if distributed else 1
    most = min(len(part.nodes), part.max_nodes or len(part.nodes))
    if nodes > most:
        raise ValueError(f"{_env('nodes')}: asks {nodes} nodes; {where} has at most {most} for a job: "
                         f"set {_env('nodes')}={most}")
    if s.minutes is not None and part.max_minutes is not None and s.minutes > part.max_minutes:
        raise ValueError(f"{_env('time')}: asks {s.minutes} minutes; {where} allows at most {part.max_minutes}: "
                         f"set {_env('time')}={part.max_minutes} (runs requeue themselves before the limit)")
    per_node_gpus = tasks if distributed and gpus else gpus
    fitting = [n for n in part.nodes if n.cpus >= cpus * tasks and n.gpus >= per_node_gpus
               and (s.mem is None or n.mem_mb >= mem_mb(s.mem))]
    if len(fitting) < nodes:
        raise ValueError(_refusal(s, part, distributed, cpus, gpus))
    return replace(s, gpus=gpus, cpus=cpus)


def request(distributed: bool = False, given: Settings | None = None) -> Settings:
    """The settings a run is submitted with (``given``, else ``settings()``), checked against the cluster:
    ``SlurmError`` when Slurm does not answer, ``ValueError`` naming the setting when the run could never start
    (said where Start was pressed)."""
    s = given or settings()
    return fit(s, partition(s.partition), distributed)


def summary(s: Settings, distributed: bool = False) -> str:
    """What one run asks the cluster for, in words (the Train page's banner)."""
    per = f"{s.nodes} node(s) x {tasks_per_node(s, distributed)} task(s)" if distributed else "one task"
    gpus = min(1, s.gpus or 0) if distributed else s.gpus or 0  # a distributed run: one GPU per task
    return (f"partition {s.partition or 'default'}, {per}, {gpus} GPU(s) and {s.cpus} CPU(s) per task"
            + (f", {s.mem} per node" if s.mem else "")
            + (f", {s.minutes} min per job, requeued before the limit" if s.minutes else ""))


def check_folder(root: Path) -> None:
    """Refuse a checkpoints folder whose path a #SBATCH line cannot carry (checked before anything is written)."""
    if any(c in str(root) for c in '"\\\n\r'):
        raise ValueError(f"checkpoints: the folder {str(root)!r} has a quote, a backslash or a line break in its "
                         "path, which sbatch's --output cannot carry: use a folder without them")


def _directives(s: Settings, n_runs: int, distributed: bool, batch: Path) -> list[str]:
    check_folder(batch)
    # Quoted: sbatch reads #SBATCH values with spaces only between quotes; % is its file-name pattern, %% one %.
    folder = str(batch).replace("%", "%%")
    output = f"{folder}/slurm-%A_%a.out" if n_runs > 1 else f"{folder}/slurm-%j.out"
    lines = [f"--job-name={JOB_NAME}", "--open-mode=append", "--requeue", "--export=ALL",
             f'--output="{output}"']
    if n_runs > 1:
        lines.append(f"--array=0-{n_runs - 1}" + (f"%{s.max_parallel}" if s.max_parallel else ""))
    lines += ([f"--nodes={s.nodes}", f"--ntasks-per-node={tasks_per_node(s, distributed)}"] if distributed
              else ["--ntasks=1"])
    lines.append(f"--cpus-per-task={s.cpus or DEFAULT_CPUS}")
    if s.gpus:
        lines.append(f"--gpus-per-task={1 if distributed else s.gpus}")
    if s.mem:
        lines.append(f"--mem={s.mem}")
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
export EFFNET_SLURM_BATCH={shlex.quote(batch.name)}
# Rank 0 runs on the job's first node; the others reach it at that node's NodeAddr (its name may resolve nowhere).
first="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
addr="$(scontrol show node "$first" -o 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)"
export MASTER_ADDR="${{addr:-$first}}"
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


# sbatch's refusals that have a plain reason and a fix (the checks at submit catch most before sbatch sees them).
REFUSALS = {
    "Invalid generic resource (gres) specification":
        "the partition has no GPUs (or none of the kind asked for): set EFFNET_SLURM_GPUS=0 to train on CPUs, or "
        "choose a partition with GPUs (EFFNET_SLURM_PARTITION)",
    "Memory specification can not be satisfied":
        "no node of the partition has that much memory: lower EFFNET_SLURM_MEM",
    "Requested node configuration is not available":
        "no node of the partition has what one run asks for (CPUs, memory or GPUs): lower EFFNET_SLURM_CPUS, "
        "EFFNET_SLURM_MEM or EFFNET_SLURM_GPUS, or choose another partition",
    "Invalid account or account/partition combination":
        "this account may not use that partition: check EFFNET_SLURM_ACCOUNT and EFFNET_SLURM_PARTITION",
    "invalid partition specified": "there is no such partition: check EFFNET_SLURM_PARTITION (sinfo lists them)",
}


def _plain_refusal(message: str) -> str:
    plain = next((why for code, why in REFUSALS.items() if code.lower() in message.lower()), None)
    return f"Slurm refused the job: {plain} ({message})" if plain else message


def submit(run_dirs: list[Path], root: Path, distributed: bool = False, s: Settings | None = None) -> list[str]:
    """Submit ``run_dirs`` (queued runs) as one job or one job array with ``s`` (default: ``request``); returns their
    Slurm job ids, also written into each run's status.json. ``SlurmError`` when Slurm is unreachable or refuses,
    ``ValueError`` for a request or folder it could never take (nothing is submitted then)."""
    s = s or request(distributed)
    batch = root / FOLDER / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    text = script(run_dirs, s, distributed, batch)  # before anything is written: a path it cannot carry is refused
    batch.mkdir(parents=True)
    path = batch / "job.sbatch"
    files.atomic_write_bytes(path, text.encode())
    try:
        answer = _slurm("sbatch", "--parsable", str(path)).strip().split(";")[0]
    except SlurmError as exc:
        shutil.rmtree(batch, ignore_errors=True)
        raise SlurmError(_plain_refusal(str(exc))) from exc
    ids = [f"{answer}_{i}" for i in range(len(run_dirs))] if len(run_dirs) > 1 else [answer]
    for run_dir, job_id in zip(run_dirs, ids, strict=True):
        # Under the status lock, over what is there: a job that started at once may have written already.
        with runs.status_lock(run_dir):
            status = files.read_json(run_dir / runs.STATUS) or {}
            mine = {"slurm_job_id": job_id, "slurm_batch": batch.name}
            files.write_json(run_dir / runs.STATUS, status | mine if status.get("slurm_job_id") == job_id else
                             {**status, **mine, "state": "queued", "slurm_state": "PENDING"})
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


# squeue's pending reasons in plain words, with what to do. The first ones never clear by themselves (someone must
# change the request or the cluster; the checks at submit refuse most such runs up front); the rest wait for
# something that will come.
REASONS = {
    "PartitionConfig": "the partition cannot run what this run asks for (CPUs, memory, GPUs or nodes per job): stop "
                       "it, lower EFFNET_SLURM_CPUS, _MEM, _GPUS or _NODES, and resume it",
    "PartitionNodeLimit": "it asks more nodes than the partition allows a job: stop it, lower EFFNET_SLURM_NODES "
                          "and resume it",
    "PartitionTimeLimit": "its time limit is over the partition's: stop it, lower EFFNET_SLURM_TIME and resume it",
    "BadConstraints": "no node has the features it asks for: stop it and fix --constraint in EFFNET_SLURM_EXTRA",
    "InvalidQOS": "its QOS is not valid for the account: stop it and fix --qos in EFFNET_SLURM_EXTRA, or ask the "
                  "cluster's administrator",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved: it starts when they are back (ask the "
                       "cluster's administrator if they stay down)",
    "AssocMaxJobsLimit": "the account's job limit is reached: it starts when other jobs of the account end",
    "PartitionDown": "the partition is down: it starts when the administrator brings it up",
    "Resources": "waiting for free nodes",
    "Priority": "waiting for jobs ahead of it",
    "BeginTime": "waiting for its start time",
    "Dependency": "waiting for another job",
    "JobHeldUser": "held: release it with scontrol release",
    "JobHeldAdmin": "held by the administrator",
    "NodeDown": "a node it needs is down: it starts when the node is back",
}
# Where squeue gives the reason's description rather than its code (measured on Slurm 22.05).
DESCRIBED = {"Nodes required for job are DOWN, DRAINED": "ReqNodeNotAvail"}


def pending_reason(reason: str | None) -> str | None:
    """Slurm's pending reason code as people read it, with the fix where it never clears by itself."""
    if not reason or reason == "None":
        return None
    code = reason.removeprefix("requeued; ").split(",")[0].strip()
    code = next((c for text, c in DESCRIBED.items() if reason.removeprefix("requeued; ").startswith(text)), code)
    words = REASONS.get(code)
    requeued = "requeued; " if reason.startswith("requeued; ") else ""
    return f"{requeued}{code}: {words}" if words else reason


def detail(status: dict[str, Any]) -> str | None:
    """A Slurm run's state for people: "pending (Resources: waiting for free nodes)", "running on n[1-2]",
    "timeout"; None when the run is not a Slurm job."""
    if not status.get("slurm_job_id"):
        return None
    job, state = status["slurm_job_id"], status.get("slurm_state") or "PENDING"
    if state == "PENDING":
        reason = pending_reason(status.get("slurm_reason"))
        return f"Slurm job {job}: pending" + (f" ({reason})" if reason else "")
    if state in ("RUNNING", "COMPLETING"):
        return f"Slurm job {job}: running on {status.get('slurm_nodes') or status.get('node') or '?'}"
    return f"Slurm job {job}: {state.lower()}"


# ----------------------------------------------------------------------------- stop, and watching
def stop(info: runs.RunInfo) -> str:
    """Cancel a pending job, or one whose trainer has not started yet (there is no step to signal, and nothing to
    checkpoint); ask a running trainer to checkpoint and exit (SIGTERM to its step)."""
    job = info.status.get("slurm_job_id")
    if job is None:  # queued a moment ago, sbatch has not answered: the run is marked, the job not yet known
        raise ValueError(f"run {info.run_id} is being submitted to Slurm right now: stop it in a moment")
    if info.state == "queued" or info.status.get("phase") == STARTING_PHASE:
        _slurm("scancel", job)
        with runs.status_lock(info.path):
            status = files.read_json(info.path / runs.STATUS) or {}
            files.write_json(info.path / runs.STATUS, {**status, "state": "stopped", "slurm_state": "CANCELLED"})
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
    watched = [i for i in runs.list_runs(root) if not i.damaged and i.status.get("slurm_job_id")
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


# The phase this module writes when Slurm runs the job before its trainer has said a word (the trainer's first
# status write replaces it): stop then cancels the job outright.
STARTING_PHASE = "Slurm started the job; the trainer is starting"
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
            "slurm_requeues": int(status.get("slurm_requeues") or 0) + 1, "slurm_nodes": None}


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
        started = {"state": "starting", "phase": STARTING_PHASE} \
            if ours == "queued" else {}  # the run's state follows Slurm's: running while the job runs
        return status | {"slurm_state": "RUNNING"} | started | ({} if status.get("slurm_nodes")
                                                                  else {"slurm_nodes": job.node})
    if theirs == "COMPLETED" and ours not in runs.ACTIVE:
        return status | {"state": "failed", "slurm_state": theirs,
                         "error": "the Slurm job ended before the trainer started: " + _ended_reason(job, batch)}
    if theirs in (*FAILED_STATES, "COMPLETED", "GONE"):
        return status | {"state": "failed", "slurm_state": theirs, "error": _ended_reason(job, batch)}
    return status


def _merge(run_dir: Path, job: JobState | None, root: Path) -> None:
    """Write Slurm's word on a run's job into its status.json (only when something changed)."""
    asked_to_stop = "stop_requested" in (files.read_json(run_dir / runs.JOB) or {})
    try:
        with runs.status_lock(run_dir):  # the trainer may be writing it right now
            status = files.read_json(run_dir / runs.STATUS) or {}
            batch = root / FOLDER / str(status["slurm_batch"]) if status.get("slurm_batch") else None
            new = _merged(status, job, asked_to_stop, batch)
            if new != status:
                files.write_json(run_dir / runs.STATUS, new)
    except FileNotFoundError:
        return  # the run was deleted meanwhile: nothing to merge into, and no folder brought back


def ensure_watcher(root: Path) -> None:
    """Start the watcher (``python -m effnet.slurm watch``) unless one holds the lock already."""
    if not locks.is_held(root / WATCHER_LOCK):
        spawn_detached(["effnet.slurm", "watch", "--root", str(root)], root / ".slurm-watcher.log")


def watch(root: Path) -> None:
    """Sync every few seconds while any Slurm run is not ended, so an end is recorded even when no page is open."""
    with locks.exclusive(root / WATCHER_LOCK, wait=False) as mine:
        if not mine:
            return
        down_since = None
        while True:
            why = reachable()
            if why and down_since is None:  # said once per outage, in the watcher's log; nothing is marked meanwhile
                down_since = time.time()
                print(f"{time.strftime('%H:%M:%S')} Slurm is not answering ({why}): runs keep their last known "
                      "state until it does", flush=True)
            elif not why and down_since is not None:
                print(f"{time.strftime('%H:%M:%S')} Slurm answers again after {time.time() - down_since:.0f} s",
                      flush=True)
                down_since = None
            if not sync(root):
                return
            time.sleep(WATCH_S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet.slurm", description="the Slurm backend's watcher")
    p.add_argument("command", choices=("watch", "sync", "script"))
    p.add_argument("--root", help="the checkpoints folder (default: $EFFNET_CHECKPOINTS or ./checkpoints)")
    args = p.parse_args(argv)
    try:
        settings()
    except ValueError as exc:  # a bad setting is one line, not a traceback
        p.error(str(exc))
    root = runs.checkpoints_dir(args.root).resolve()
    if args.command != "script" and not root.is_dir():  # never created here: a typo is not a new checkpoints folder
        p.error(f"--root: {root} is not a folder")
    if args.command == "watch":
        watch(root)
    elif args.command == "sync":
        print(f"{sync(root)} Slurm run(s) still active")
    else:
        try:
            chosen = request()
        except SlurmError as exc:  # the settings as given; the partition's defaults need the cluster
            print(f"# Slurm does not answer ({exc}): GPUs and CPUs are the settings' own, not fitted to a "
                  "partition", file=sys.stderr)
            chosen = settings()
        except ValueError as exc:
            p.error(str(exc))
        print(script([root / "RUN"], chosen, False, root / FOLDER / "BATCH"))
    return 0

