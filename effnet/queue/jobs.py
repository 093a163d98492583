"""The job queue: submit, the runner, stop, resume, delete. Run folders themselves belong to ``effnet.training.runs``.

State lives on disk under the checkpoints folder, so every app session, every app process and the
CLI see the same truth, and runs survive the app rerunning or restarting:

- ``submit`` writes ``<root>/<run-id>/job.json`` (the config, label, owner, queue time and a
  generation number) and a "queued" status, then makes sure a *runner* is alive.
- The runner (``python -m effnet.jobs runner``) is a detached process holding ``.runner.lock``. It
  trains queued runs oldest first, one per device slot at a time (every GPU, or the CPU), and exits
  when nothing is queued or running. Whoever looks at the queue (the Train page, ``jobs list``)
  and finds queued runs with no runner starts one, so a killed runner never stalls the queue.
- Queue transitions (submit, stop, resume, pick next) happen under ``.queue.lock``. Each queueing
  bumps the run's generation; the runner's bookkeeping after a process exits only applies if the
  generation is still the one it started, so a run resumed meanwhile is never marked failed.
- Each run holds the lock of its device slot while it trains, so even a run orphaned by a killed
  runner never shares its device with the next one (the next one shows "waiting").
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from effnet.arch import specs
from effnet.base import access, files, locks, tasks
from effnet.base.access import Caller, readonly
from effnet.base.locks import DEVICE_LOCK_ENV, QUEUE_LOCK, RUNNER_LOCK
from effnet.base.processes import PROJECT, spawn_detached
from effnet.base.schemas import clean_label
from effnet.base.text import slug
from effnet.queue import slurm
from effnet.training import checkpoint, runs
from effnet.training.config import TrainConfig
from effnet.training.devices import DEVICES_ENV, check_memory, device_lock, device_slots, slot_device
from effnet.training.measure import MAX_CPU_EPOCH_S, cpu_seconds
from effnet.training.runs import ACTIVE, RunInfo, checkpoints_dir, list_runs, run_path

POLL_S = 0.5
STOPPED_BY_TEACHER = "stopped_by_teacher"  # job.json (schemas.Job): when the teacher stopped a student's run


# ----------------------------------------------------------------------------- checks before queueing
def check_fits(config: TrainConfig) -> None:
    """Refuse a run that cannot work on its device: training memory over what it has (``devices.check_memory``),
    or, on a CPU, an epoch that would take more than a day (φ=10 on two cores: months). Runs for a Slurm cluster
    are not measured against this machine (its nodes' devices are the cluster's)."""
    if slurm.backend() == "slurm":
        return
    device = config.device if config.device != "auto" else slot_device(device_slots()[0])
    check_memory(specs.card(config.spec), config.batch_size, device)
    _check_cpu_time(config)


def training_images(config: TrainConfig) -> int:
    """How many images a run trains on per epoch: its subset, else the dataset's training images less the
    validation split (``ValueError`` when that split leaves nothing: refused before anything is queued)."""
    from effnet.data.cifar import DataError, cifar_counts, data_dir
    from effnet.data.folder import split_sizes
    from effnet.training.config import val_count

    try:
        n_train = (split_sizes(data_dir(config.data_dir))[0] if config.dataset == "folder"
                   else cifar_counts(config.data_dir)[0])
    except DataError as exc:
        raise ValueError(f"data_dir: {exc}") from exc
    available = n_train - val_count(config, n_train)
    return min(config.subset, available) if config.subset else available


def _check_quota(root: Path, caller: Caller | None, adding: int) -> None:
    access.check_runs(caller, adding, lambda: sum(1 for r in list_runs(root) if caller.counts(r.owner) and r.pending))


# ----------------------------------------------------------------------------- queue actions
def _check_cpu_time(config: TrainConfig) -> None:
    if slot_device(device_slots()[0]) != "cpu" and config.device != "cpu":
        return
    images = training_images(config)
    seconds = cpu_seconds(config.spec, images)
    if seconds > MAX_CPU_EPOCH_S:
        raise ValueError(f"phi: {config.spec.name} would take about {seconds / 3600:,.0f} hours per epoch of "
                         f"{images:,} images on this CPU (estimated from its {specs.card(config.spec).macs / 1e9:.1f} G "
                         "multiply-adds per image); choose a smaller model or fewer images, or train on a GPU server")


def submit(config: TrainConfig, root: str | os.PathLike | None = None, label: str | None = None,
           caller: Caller | None = None, distributed: bool = False, start_runner: bool = True) -> str:
    """Queue a training run; returns its run id.

    Everything is checked first (settings, spec, memory, disk, the caller's quota), so a refused run
    leaves no trace. ``distributed``: one DDP job across every device slot of the queue.
    """
    return submit_many([config], root, [label], caller, distributed, start_runner)[0]


def submit_many(configs: list[TrainConfig], root: str | os.PathLike | None = None,
                labels: list[str | None] | None = None, caller: Caller | None = None, distributed: bool = False,
                start_runner: bool = True) -> list[str]:
    """Queue several runs, all or none: each is checked before the first is written."""
    root = checkpoints_dir(root).resolve()
    labels = labels or [None] * len(configs)
    pinned = []
    for config in configs:
        config.validate()
        check_fits(config)
        checkpoint.check_disk(config, root)
        # The runner starts in the project folder: pin the data folder this process means (a relative one too).
        from effnet.data.cifar import data_dir

        config = config.replace(data_dir=str(Path(config.data_dir or data_dir()).resolve()))
        pinned.append(config)
    on_slurm = slurm.backend() == "slurm"
    # Said where Start was pressed, before anything is written: Slurm not answering, or a request no node of the
    # partition could ever run (ValueError naming the setting).
    request = slurm.request(distributed) if on_slurm else None
    if on_slurm:
        slurm.check_folder(root)
    ids = []
    with locks.exclusive(root / QUEUE_LOCK):
        _check_quota(root, caller, len(pinned))
        for config, label in zip(pinned, labels, strict=True):
            label = clean_label(label) if label else runs.describe(config.spec, config)
            run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(label)}-{secrets.token_hex(2)}"
            run_dir = root / run_id
            run_dir.mkdir(parents=True)
            files.write_json(run_dir / runs.JOB, {"config": config.to_dict(), "label": label, "queued_at": time.time_ns(),
                                                 "generation": 1, "owner": caller.owner if caller else None,
                                                 "resume": False, "distributed": distributed})
            # A Slurm run is marked as one from the start: no local runner takes it while sbatch answers.
            files.write_json(run_dir / runs.STATUS, {"state": "queued", "generation": 1,
                                                    **({"backend": "slurm"} if on_slurm else {})})
            ids.append(run_id)
    if on_slurm:
        try:
            slurm.submit([root / i for i in ids], root, distributed, request)
        except (slurm.SlurmError, ValueError, OSError):
            for run_id in ids:  # all or none
                shutil.rmtree(root / run_id, ignore_errors=True)
            raise
    elif start_runner:
        ensure_runner(root)
    return ids


def resume(run_id: str, root: str | os.PathLike | None = None, caller: Caller | None = None) -> None:
    """Queue a stopped or failed run again; it continues from its last checkpoint."""
    root = checkpoints_dir(root).resolve()
    run_dir = run_path(root, run_id)
    job = files.load_json(run_dir / runs.JOB) or {}
    on_slurm = runs.on_slurm(files.read_json(run_dir / runs.STATUS) or {}) or slurm.backend() == "slurm"
    request = slurm.request(bool(job.get("distributed"))) if on_slurm else None  # refused before anything changes
    with locks.exclusive(root / QUEUE_LOCK):
        info = runs.read_run(run_dir)
        access.check(caller, info, "resume")
        if not resumable(info):
            raise ValueError(f"run {run_id} cannot be resumed: it is {info.state}"
                             + ("" if info.from_queue else " and was not started from the queue (use python -m "
                                "effnet.train --resume)"))
        _check_quota(root, caller, 1)
        job = {k: v for k, v in (files.load_json(run_dir / runs.JOB) or {}).items() if k != STOPPED_BY_TEACHER}
        generation = int(job.get("generation", 0)) + 1
        files.write_json(run_dir / runs.JOB, {**job, "resume": (run_dir / runs.LAST).is_file(),
                                             "queued_at": time.time_ns(), "generation": generation})
        files.write_json(run_dir / runs.STATUS, {**info.status, "state": "queued", "error": None,
                                                "generation": generation})
    if request is not None:
        job = files.load_json(run_dir / runs.JOB) or {}
        files.write_json(run_dir / runs.JOB, {k: v for k, v in job.items() if k != "stop_requested"})
        slurm.submit([run_dir], root, bool(job.get("distributed")), request)  # a new job resumes the checkpoint
    else:
        ensure_runner(root)


def resumable(info: RunInfo) -> bool:
    """Stopped or failed with a checkpoint to continue from, or stopped before it ever trained (it starts again;
    a run refused before training has neither)."""
    if not info.from_queue or info.damaged:
        return False
    if (info.path / runs.LAST).is_file():
        return info.state in ("stopped", "failed")
    return info.state == "stopped" and not (info.path / runs.METRICS).exists() and not (info.path / runs.LOG).exists()


def stopped_by_teacher(info: RunInfo) -> bool:
    """Whether the teacher stopped this student's run (the card says so, and its owner may resume it)."""
    return info.state == "stopped" and bool((info.job or {}).get(STOPPED_BY_TEACHER))


def stop(run_id: str, root: str | os.PathLike | None = None, caller: Caller | None = None) -> str:
    """Cancel a queued run, or ask a running one to checkpoint and exit (SIGTERM). Returns the new state."""
    root = checkpoints_dir(root).resolve()
    run_dir = run_path(root, run_id)
    with locks.exclusive(root / QUEUE_LOCK):
        info = runs.read_run(run_dir)
        access.check(caller, info, "stop")
        by_teacher = caller is not None and caller.teacher and info.owner not in (None, caller.owner)
        if info.on_slurm and info.pending:
            _mark(run_dir, {"stop_requested": time.time()} | ({STOPPED_BY_TEACHER: time.time()} if by_teacher else {}))
            return slurm.stop(info)  # (stop_requested: not a requeue)
        if info.state == "queued":
            if by_teacher:
                _mark(run_dir, {STOPPED_BY_TEACHER: time.time()})
            files.write_json(run_dir / runs.STATUS, {**info.status, "state": "stopped"})
            return "stopped"
    if info.active and tasks.signal_stop(info.status, runs.TRAINER, run_dir.name):
        if by_teacher:  # only once the stop is really on its way: its owner is told who stopped it, and when
            with locks.exclusive(root / QUEUE_LOCK):
                _mark(run_dir, {STOPPED_BY_TEACHER: time.time()})
        return "stopping"
    return info.state


def _mark(run_dir: Path, fields: dict[str, float]) -> None:
    """Add ``fields`` to the run's job.json (under the queue lock, which the caller holds)."""
    files.write_json(run_dir / runs.JOB, {**(files.load_json(run_dir / runs.JOB) or {}), **fields})


def delete(run_id: str, root: str | os.PathLike | None = None, wait_s: float = 30.0,
           caller: Caller | None = None) -> None:
    """Stop the run if needed, then remove its folder (a symbolic link in its place: only the link)."""
    root = checkpoints_dir(root).resolve()
    link = root / run_id if runs.is_run_id(run_id) else None
    if link is not None and link.is_symlink():
        if caller is not None and (readonly() or not caller.teacher):
            raise PermissionError(f"{run_id} is not a run; only the teacher may remove it")
        link.unlink()
        return
    run_dir = run_path(root, run_id)
    info = runs.read_run(run_dir)
    access.check(caller, info, "delete")
    stop(run_id, root)
    tasks.wait_until(lambda: not runs.read_run(run_dir).active, wait_s, f"run {run_id}")
    from effnet.compression.compressions import stop_all  # a compression writing into the run stops first

    stop_all(run_dir, wait_s)
    status = run_dir / runs.STATUS
    if status.is_dir() and not status.is_symlink():  # a damaged run: a folder in status.json's place
        shutil.rmtree(status)
    status.unlink(missing_ok=True)  # a compression starting now sees the run is going
    shutil.rmtree(run_dir)
    access.forget_usage()


def delete_many(run_ids: list[str], root: str | os.PathLike | None = None, caller: Caller | None = None) -> list[str]:
    """The teacher's bulk delete (everything of one owner, or of one import): each run as ``delete`` does it;
    returns the reasons of those that could not go (the rest are gone)."""
    if caller is not None and not caller.teacher:
        raise PermissionError("only the teacher may delete many runs at once")
    problems = []
    for run_id in run_ids:
        try:
            delete(run_id, root, caller=caller)
        except (ValueError, RuntimeError, PermissionError, OSError) as exc:
            problems.append(f"{run_id}: {exc}")
    return problems


def rename(run_id: str, label: str, root: str | os.PathLike | None = None, caller: Caller | None = None) -> None:
    """Give a run the label every page shows (kept in its job.json, or a new one for a CLI-started run)."""
    label = clean_label(label)
    root = checkpoints_dir(root).resolve()
    run_dir = run_path(root, run_id)
    with locks.exclusive(root / QUEUE_LOCK):
        info = runs.read_run(run_dir)
        access.check(caller, info, "rename")
        if info.damaged:
            raise ValueError(f"run {run_id} is damaged ({info.error}); delete it instead")
        files.write_json(run_dir / runs.LABEL, {"label": label})


# ----------------------------------------------------------------------------- devices and the runner
def _fits_slot(config: TrainConfig, slot: str) -> bool:
    """auto and cpu runs take any slot (a CPU run still occupies one); cuda needs a GPU, cuda:N that GPU."""
    wanted, device = config.device, slot_device(slot)
    return wanted in ("auto", "cpu", device) or (wanted == "cuda" and device.startswith("cuda"))


def heal(root: str | os.PathLike | None = None, infos: list[RunInfo] | None = None) -> bool:
    """Start a runner when queued runs wait and none is alive; True if one was started."""
    root = checkpoints_dir(root).resolve()
    infos = list_runs(root) if infos is None else infos
    if any(i.on_slurm and (i.active or i.state in ("queued", "stopped")) for i in infos):
        slurm.sync(root)  # the pages show Slurm's news at once; the watcher records it when nobody looks
        slurm.ensure_watcher(root)
    if not any(i.queued_here for i in infos) \
            or locks.is_held(root / RUNNER_LOCK):
        return False
    ensure_runner(root)
    return True


def ensure_runner(root: Path) -> None:
    """Start a detached runner; if one already holds the lock, the new one exits at once."""
    spawn_detached(["effnet.jobs", "runner", "--root", str(root)], root / ".runner.log")


@dataclass
class _Started:
    run_dir: Path
    proc: subprocess.Popen
    generation: int
    slots: list[str]


def _command(info: RunInfo, job: dict, slots: list[str]) -> list[str]:
    train = ["-m", "effnet.train", "--config", str(info.path / runs.JOB), "--out", str(info.path)]
    train += ["--resume"] if job.get("resume") else []
    if len(slots) == 1:
        device = "cpu" if info.config.device == "cpu" else slot_device(slots[0])
        return [sys.executable, *train, "--device", device]
    device = "cpu" if info.config.device == "cpu" or all(slot_device(s) == "cpu" for s in slots) else "cuda"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(len(slots)),
            *train, "--device", device]


def _pick(queued: list[RunInfo], free: list[str], slots: list[str]) -> tuple[RunInfo, list[str]] | None:
    """The oldest queued run that can start on the free slots now.

    A waiting distributed run needs every slot: once it is first in line, nothing overtakes it.
    """
    for info in queued:
        if info.distributed:
            return (info, slots) if len(free) == len(slots) else None
        chosen = next((s for s in free if _fits_slot(info.config, s)), None)
        if chosen is not None:
            return info, [chosen]
    return None


def _placeable(info: RunInfo, slots: list[str]) -> bool:
    """Whether some slot of this server could ever train the run; if none could, it fails now, saying why.

    Without this, a run asking for a device the server does not have would wait forever, and the runner
    would spin looking at it.
    """
    if any(_fits_slot(info.config, s) for s in slots):
        return True
    files.write_json(info.path / runs.STATUS, {**info.status, "state": "failed", "error": (
        f"device: this server has no {info.config.device!r}; its devices are {', '.join(slots)} "
        f"({DEVICES_ENV} or the visible GPUs)")})
    return False


def _start_next(root: Path, running: list[_Started]) -> _Started | None:
    """Under the queue lock: launch the oldest queued run that fits a free slot, or None."""
    with locks.exclusive(root / QUEUE_LOCK):
        taken = {s for r in running for s in r.slots}
        slots = device_slots()
        free = [s for s in slots if s not in taken]
        queued = [r for r in list_runs(root) if r.queued_here
                  and _placeable(r, slots)]
        picked = _pick(queued, free, slots)
        if picked is None:
            return None
        info, slots = picked
        job = files.load_json(info.path / runs.JOB) or {}
        generation = int(info.status.get("generation", job.get("generation", 0)))
        env = {**os.environ, DEVICE_LOCK_ENV: os.pathsep.join(str(device_lock(root, s)) for s in slots)}
        with open(info.path / runs.LOG, "ab") as log:
            proc = subprocess.Popen(_command(info, job, slots), cwd=PROJECT, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        files.write_json(info.path / runs.STATUS, {"state": "starting", "pid": proc.pid, "heartbeat": time.time(),
                                                  "generation": generation, "slot": ", ".join(slots)})
        return _Started(info.path, proc, generation, slots)


def _finish(started: _Started, code: int) -> None:
    """After the process exits: make its status final if it could not, unless the run was queued again meanwhile."""
    run_dir = started.run_dir
    with locks.exclusive(run_dir.parent / QUEUE_LOCK):
        status = files.read_json(run_dir / runs.STATUS) or {}
        if int(status.get("generation", started.generation)) != started.generation:
            return  # resumed (or otherwise requeued) after this process started: not ours to touch
        if status.get("state") not in ACTIVE and (code == 0 or status.get("state") == "failed"):
            return
        if code == -signal.SIGTERM:  # stopped before it could install its own handler
            files.write_json(run_dir / runs.STATUS, {**status, "state": "stopped"})
            return
        tail = runs.log_tail(run_dir)
        files.write_json(run_dir / runs.STATUS, {**status, "state": "failed", "exit_code": code,
                                                "error": f"training exited with code {code}\n{tail}".strip()})


def _drain(root: Path) -> None:
    """Start runs while slots are free, reap those that end, until nothing is queued or running."""
    running: list[_Started] = []
    while True:
        for started in [r for r in running if r.proc.poll() is not None]:
            running.remove(started)
            try:
                _finish(started, started.proc.returncode)
            except OSError as exc:  # a full disk must not kill the runner: the next run may fit
                print(f"could not record the end of {started.run_dir.name}: {exc}", file=sys.stderr, flush=True)
        try:
            while (started := _start_next(root, running)) is not None:
                running.append(started)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            print(f"disk full while starting a run: {exc}", file=sys.stderr, flush=True)
        if not running:
            return
        time.sleep(POLL_S)


def run_queue(root: Path) -> None:
    """The runner's life: while holding the runner lock, drain the queue."""
    while True:
        with locks.exclusive(root / RUNNER_LOCK, wait=False) as mine:
            if not mine:
                return  # another runner is alive and will see our job
            _drain(root)
        # A job submitted while we were deciding to leave found the lock taken; look once more.
        with locks.exclusive(root / QUEUE_LOCK):
            if not any(r.queued_here for r in list_runs(root)):
                return


def _submit_command(args: argparse.Namespace) -> int:
    """``jobs submit``: one run into the queue (this machine's, or Slurm's with EFFNET_BACKEND=slurm), as Start
    does; a refusal is one line on stderr, exit code 2, and nothing written."""
    from effnet.training.flags import config_from_args, normalization_from_args, num_classes_from_args, spec_from_args

    try:
        spec = spec_from_args(args, num_classes=num_classes_from_args(args),
                              normalization=normalization_from_args(args))
        run_id = submit(config_from_args(args, spec), args.root, args.label, distributed=args.distributed)
    except (ValueError, PermissionError, slurm.SlurmError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    from effnet.training.flags import add_spec_arguments, add_training_arguments

    parser = argparse.ArgumentParser(prog="python -m effnet.jobs", description="training job queue")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("runner", help="train queued runs (started automatically)").add_argument("--root", required=True)
    sub.add_parser("list", help="list runs and their states").add_argument("--root")
    queue_it = sub.add_parser("submit", help="queue a training run (the same flags as python -m effnet.train)")
    add_spec_arguments(queue_it, num_classes_default=None)
    add_training_arguments(queue_it)
    queue_it.add_argument("--root", help="the checkpoints folder (default: $EFFNET_CHECKPOINTS or ./checkpoints)")
    queue_it.add_argument("--label", help="the run's name on the pages (default: its spec)")
    queue_it.add_argument("--distributed", action="store_true",
                          help="one DDP run over every device slot (on Slurm: EFFNET_SLURM_NODES x _TASKS)")
    args = parser.parse_args(argv)
    if args.root is not None and not Path(args.root).is_dir():  # never created here: a typo is not a new queue
        parser.error(f"--root: {args.root} is not a folder")
    if args.command == "runner":
        run_queue(Path(args.root))
        return 0
    if args.command == "submit":
        return _submit_command(args)
    infos = list_runs(args.root)
    if heal(args.root, infos):
        print("(queued runs had no runner: started one)", file=sys.stderr)
    if any(r.on_slurm and r.pending for r in infos) and (down := slurm.reachable()):
        print(f"Slurm is not answering ({down}): the Slurm runs below are as last seen", file=sys.stderr)
    for r in infos:
        state = r.error if r.damaged else r.state
        where = slurm.detail(r.status) if r.active or r.state in ("queued", "failed") else None
        print(f"{r.run_id:<48} {state:<10} {r.label}" + (f"  [{where}]" if where else ""))
    return 0

