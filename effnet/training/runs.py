"""A training run on disk: ``checkpoints/<run-id>/``, its files read safely, and the runs as pages list them.

One module owns the layout so the trainer (writer), the job queue and the pages (readers) agree:

    job.json        a queued run: its config, label, owner, queue position and generation
    label.json      the name a user gave the run (shown everywhere instead of the generated one)
    config.json     the spec and the training settings, as the trainer started them
    status.json     state, pid, heartbeat, progress within the epoch, last error
    metrics.jsonl   one JSON line per finished epoch
    live.jsonl      running training loss and accuracy every few steps (and early validation slices)
    confusion.json  test-set confusion matrices (final and selected epoch) and the class names
    last.pt         everything needed to resume at the exact step
    best.pt         the weights of the selected epoch (``selected_row``)
    log.txt         the process's output (runs started by the job queue)

On a shared server nothing in a run folder is trusted. A run id is a plain name (``RUN_ID``) and
resolves only to a direct child of the checkpoints folder; files are read through ``effnet.base.files``
(no links followed, sizes bounded) and parsed by ``effnet.base.schemas``, so a damaged file makes its run
"damaged: <file>: <reason>" instead of breaking a page.

Listing stays cheap with thousands of runs: what each run's files say is parsed once and kept, keyed
on each file's identity and modification time, so a page that lists every 2 s re-reads only the runs
whose files changed.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.arch import specs
from effnet.base import locks, schemas, tasks
from effnet.base.files import Damaged, load_json, loads, read_file, read_tail
from effnet.base.schemas import ACTIVE, ENDED, STATES, parse
from effnet.base.text import duration
from effnet.training.checkpoint import CheckpointError, load_checkpoint
from effnet.training.config import TrainConfig

CONFIG, STATUS, METRICS, CONFUSION = "config.json", "status.json", "metrics.jsonl", "confusion.json"
LOG, JOB, LABEL, LIVE = "log.txt", "job.json", "label.json", "live.jsonl"
LAST, BEST = "last.pt", "best.pt"
# Held by whoever writes status.json while its trainer may be writing it too (the trainer, Slurm's sync): a
# read-modify-write of one never lands on top of the other's newer word ("running" over "finished").
STATUS_LOCK = ".status.lock"
__all__ = ["ACTIVE", "ENDED", "STATES"]  # the states, defined with the file schemas
# A run id: letters, digits, dot, dash, underscore; never starting with a dot (no "..", no hidden files).
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")
# Folders of the checkpoints folder that the lab itself uses, so never a run's name: a run imported as "studies"
# would hold every study made after it, and deleting that run would delete them all.
STUDIES = "studies"
RESERVED = frozenset({STUDIES})
# A run holds at most this many epoch rows (the study trains 200 epochs): a metrics file is bounded, so a
# hostile or broken one cannot make every page that charts it slow.
MAX_METRICS_BYTES = 2 * 1024 * 1024
LOG_TAIL_BYTES = 16 * 1024


def checkpoints_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$EFFNET_CHECKPOINTS``, else ``./checkpoints``."""
    return Path(path or os.environ.get("EFFNET_CHECKPOINTS") or "checkpoints")


def is_run_id(name: object) -> bool:
    """Whether ``name`` may name a run: a plain name (``RUN_ID``) that is not one of the lab's own folders."""
    return isinstance(name, str) and RUN_ID.fullmatch(name) is not None and name not in RESERVED


def run_path(root: str | os.PathLike | None, run_id: object) -> Path:
    """The folder of run ``run_id``: a direct child of ``root``, never a symbolic link.

    ``ValueError`` for anything else (``..``, ``a/b``, absolute paths, links), so no caller can be
    steered outside the checkpoints folder by a name.
    """
    if not is_run_id(run_id):
        raise ValueError(f"run: {run_id!r} is not a run id (letters, digits, '.', '-', '_'; no leading dot; not "
                         f"{', '.join(sorted(RESERVED))})")
    root = checkpoints_dir(root).resolve()
    path = root / run_id
    if path.is_symlink():
        raise ValueError(f"run: {run_id} is a symbolic link; refused")
    if not path.is_dir():
        raise ValueError(f"run: no run {run_id!r} in {root}")
    return path


# ----------------------------------------------------------------------------- the run files, each checked
def load_status(run_dir: Path) -> dict[str, Any] | None:
    """``status.json``, checked field by field (a garbage status must never read as "queued")."""
    data = load_json(run_dir / STATUS)
    return None if data is None else parse(schemas.Status, data, STATUS).model_dump(exclude_unset=True)


def load_job(run_dir: Path) -> dict[str, Any] | None:
    """``job.json``: the queued run's config (validated, as a ``TrainConfig``), label, owner and queue position."""
    data = load_json(run_dir / JOB)
    if data is None:
        return None
    job = parse(schemas.Job, data, JOB).model_dump()
    try:
        job["config"] = TrainConfig.from_dict(job["config"])
    except (ValueError, TypeError) as exc:
        raise Damaged(f"{JOB}: {exc}") from exc
    return job


def load_config(run_dir: Path) -> tuple[Any, TrainConfig | None]:
    """(spec, settings) the trainer started with, from ``config.json``; (None, None) when absent."""
    data = load_json(run_dir / CONFIG)
    if data is None:
        return None, None
    try:
        if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
            raise ValueError("spec: missing")
        spec = specs.from_dict(data["spec"])
        train = TrainConfig.from_dict(data["train"]) if "train" in data else None
    except (ValueError, TypeError) as exc:
        raise Damaged(f"{CONFIG}: {exc}") from exc
    return spec, train


def load_label(run_dir: Path) -> str | None:
    """The name a user gave the run (``label.json``), if any."""
    data = load_json(run_dir / LABEL)
    return None if data is None else parse(schemas.LabelFile, data, LABEL).label


def _rows(path: Path, model: type = schemas.MetricsRow) -> list[dict[str, Any]]:
    """The checked JSON lines of ``path`` ([] when absent); ``Damaged`` names the first bad line."""
    try:
        lines = read_file(path, MAX_METRICS_BYTES).decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except ValueError as exc:
            raise Damaged(f"{path.name}: line {n} is not valid JSON") from exc
        rows.append(parse(model, row, f"{path.name}: line {n}").model_dump(exclude_unset=True))
    return rows


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch rows of a run, each checked (``Damaged`` names the first bad line); parsed once per version."""
    return _cached(run_dir / METRICS, _rows)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """``load_metrics``, or no rows when the file is damaged (for charts that show what they can)."""
    try:
        return load_metrics(run_dir)
    except Damaged:
        return []


def read_live(run_dir: Path) -> list[dict[str, Any]]:
    """The run's within-epoch points (``live.jsonl``: running train loss and top-1, early validation), or []."""
    try:
        return _cached(run_dir / LIVE, lambda path: _rows(path, schemas.LiveRow))
    except Damaged:
        return []


def write_metrics(run_dir: Path, rows: list[dict[str, Any]], name: str = METRICS) -> None:
    """Rewrite ``metrics.jsonl`` (or ``live.jsonl``) whole: after a resume it holds each epoch exactly once."""
    import json

    from effnet.base.files import atomic_write_bytes

    atomic_write_bytes(run_dir / name, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())


def load_confusion_file(run_dir: Path) -> schemas.Confusion | None:
    """``confusion.json`` checked as a whole (class names, and matrices of counts), or None when absent."""
    data = load_json(run_dir / CONFUSION)
    return None if data is None else parse(schemas.Confusion, data, CONFUSION)


def load_classes(run_dir: Path) -> dict[str, Any] | None:
    """The class names a run was trained with (stored in confusion.json): fine, coarse, fine_to_coarse."""
    confusion = load_confusion_file(run_dir)
    classes = confusion.classes if confusion is not None else None
    if classes is None:
        return None
    if len(classes.fine_to_coarse) != len(classes.fine) or any(c >= len(classes.coarse)
                                                                for c in classes.fine_to_coarse):
        raise Damaged(f"{CONFUSION}: the class names are malformed")
    return classes.model_dump()


def read_classes(run_dir: Path) -> dict[str, Any] | None:
    """``load_classes``, or None when missing or damaged."""
    try:
        return load_classes(run_dir)
    except Damaged:
        return None


def selected_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch a run reports: its best validation top-1 (the first of equals), or its last epoch when it has no
    validation split. Never chosen on test: a number picked as the best of the test set is optimistic."""
    with_val = [r for r in rows if r.get("val_top1") is not None]
    if with_val:
        return max(with_val, key=lambda r: r["val_top1"])
    return rows[-1] if rows else None


# ----------------------------------------------------------------------------- the run's model
def shown_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a page shows or explains: best.pt (the selected epoch's weights), else last.pt, else None."""
    for name in (BEST, LAST):
        path = run_dir / name
        if path.is_file() and not path.is_symlink():
            return path
    return None


def load_model(run_dir: Path, checkpoint: Path | None = None) -> tuple[Any, Any]:
    """(model in eval mode on the CPU, its spec) from ``checkpoint`` (default: ``shown_checkpoint``).

    The spec comes from the checkpoint itself (falling back to config.json), so a checkpoint file
    plus this function is all anyone needs to use a model.
    """
    from effnet.arch.model import build_model

    path = checkpoint or shown_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir.name} has no checkpoint yet")
    state = load_checkpoint(path)
    try:
        spec_dict = state.get("spec") or (load_json(run_dir / CONFIG) or {}).get("spec")
        if not isinstance(spec_dict, dict):
            raise CheckpointError(f"{path} does not say which model it holds (no spec)")
        spec = specs.from_dict(spec_dict)
        model = build_model(spec)
    except (Damaged, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: its spec cannot be used ({exc})") from exc
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit {spec.name}: {str(exc).splitlines()[0]}") from exc
    return model.eval(), spec


# ----------------------------------------------------------------------------- parsed once per file version
_MEMO: dict[Path, tuple[tuple, Any]] = {}
_MEMO_LOCK = threading.Lock()


def _identity(paths: tuple[str | Path, ...]) -> tuple:
    """What changes when any of ``paths`` is rewritten (atomically: a new inode; in place: size and time)."""
    out = []
    for p in paths:
        try:
            st = os.lstat(p)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _cached(path: str | Path, read: Any, *also: str | Path) -> Any:
    """``read(path)``, computed again only when ``path`` (or ``also``) changed since the last call."""
    key = _identity((path, *also))
    with _MEMO_LOCK:
        hit = _MEMO.get(path)
    if hit is not None and hit[0] == key:
        if isinstance(hit[1], Damaged):
            raise hit[1]
        return hit[1]
    try:
        value: Any = read(path)
    except Damaged as exc:
        value = exc
    with _MEMO_LOCK:
        _MEMO[path] = (key, value)
        if len(_MEMO) > 50_000:  # a bound, far above any class's runs: forget the oldest half
            for old in list(_MEMO)[: len(_MEMO) // 2]:
                del _MEMO[old]
    if isinstance(value, Damaged):
        raise value
    return value


# ----------------------------------------------------------------------------- a run as pages show it
@dataclass(frozen=True)
class RunInfo:
    """One run as the pages and ``jobs list`` show it."""

    run_id: str
    path: Path
    state: str  # queued, starting, waiting, loading data, running, stopped, finished, failed, damaged
    label: str
    spec: Any  # the ScalingSpec it trains (None when nothing says)
    config: TrainConfig | None
    status: dict[str, Any]
    error: str | None
    queued_at: int = 0  # ns; queue order (0 for runs started from the command line)
    owner: str | None = None
    from_queue: bool = False  # has a job.json: the queue can resume it
    distributed: bool = False  # queued as one DDP job across every device slot
    job: dict[str, Any] | None = None  # job.json as read (None for a run started from the command line)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def damaged(self) -> bool:
        return self.state == "damaged"

    @property
    def pending(self) -> bool:
        """Queued or training: not yet ended (what quotas count, what the pages always show)."""
        return self.active or self.state == "queued"

    @property
    def on_slurm(self) -> bool:
        """Submitted to a Slurm cluster: Slurm runs and watches it, not a local runner."""
        return on_slurm(self.status)

    @property
    def queued_here(self) -> bool:
        """Queued for this machine's runner (not on Slurm)."""
        return self.state == "queued" and not self.on_slurm


def _source_name(run_dir: Path) -> str:
    """What a run started from is called in a label: its label, else its folder's name (short)."""
    try:
        name = load_label(run_dir) or (load_job(run_dir) or {}).get("label") or run_dir.name
    except (Damaged, OSError):
        name = run_dir.name
    return name if len(name) <= 24 else name[:23] + "…"


def describe(spec: Any, config: TrainConfig | None = None) -> str:
    """A label that tells runs apart: model, epochs, training images, dataset, and where it started.

    ``B0 · 3 ep · 2,000 img`` beside ``B0 · 200 ep · all img · leaves · from B0 · 3 ep``: the same model trained
    on other data, or from other weights, must not look like one result.
    """
    parts = [spec.name]
    if config is not None:
        parts.append(f"{config.epochs} ep")
        parts.append(f"{config.subset:,} img" if config.subset else "all img")
        if config.dataset == "folder" and config.data_dir:
            parts.append(Path(config.data_dir).name)
        if config.pretrained:
            parts.append("from ImageNet")
        if config.init_from:
            parts.append(f"from {_source_name(Path(config.init_from))}")
    label = " · ".join(parts)
    return schemas.clean_label(label if len(label) <= 80 else label[:79] + "…")


def log_tail(run_dir: Path, lines: int = 15) -> str:
    """The last lines of a run's log (only its last 16 KiB are read, however long it grew)."""
    try:
        return "\n".join(read_tail(run_dir / LOG, LOG_TAIL_BYTES).decode(errors="replace").splitlines()[-lines:])
    except (OSError, Damaged):
        return ""


@dataclass(frozen=True)
class _Files:
    """What a run's JSON files say, parsed once per version of them."""

    status: dict[str, Any]
    job: dict[str, Any] | None
    spec: Any
    config: TrainConfig | None
    label: str


def _parse_files(run_dir: Path) -> _Files:
    status, job, (spec, config) = load_status(run_dir), load_job(run_dir), load_config(run_dir)
    named = load_label(run_dir)
    config = config or (job or {}).get("config")
    spec = spec or (config.spec if config is not None else None)
    label = named or (job or {}).get("label") or (describe(spec, config) if spec is not None else run_dir.name)
    return _Files(status or {}, job, spec, config, label)


def _liveness(run_dir: Path, status: dict[str, Any], state: str) -> tuple[str, str | None]:
    """An active state whose process is gone (or silent) is a failed run, with the reason and the log's end
    (``tasks``: the lifecycle a run shares with compressions)."""
    why = tasks.why_lost(status)
    if why is None:
        return state, status.get("error")
    error = f"The training process died ({why}: killed, out of memory, or the machine restarted)."
    tail = log_tail(run_dir)
    return "failed", error + ("\nLast output:\n" + tail if tail else "")


def read_run(run_dir: Path) -> RunInfo:
    """A run's state from its files, with dead processes detected and damaged files reported."""
    base = os.fspath(run_dir)  # plain strings: pathlib's joins were most of listing 2,000 runs
    files = [os.path.join(base, n) for n in (JOB, CONFIG, LABEL)]
    try:
        if os.path.islink(base):
            raise Damaged(f"{run_dir.name}: the run folder is a symbolic link; refused")
        parsed: _Files = _cached(os.path.join(base, STATUS), lambda _: _parse_files(run_dir), *files)
    except Damaged as exc:
        return RunInfo(run_dir.name, run_dir, "damaged", run_dir.name, None, None, {}, f"damaged: {exc}")
    status, job = parsed.status, parsed.job or {}
    state = status.get("state", "queued" if parsed.job else "unknown")
    error = status.get("error")
    if state in ACTIVE and not on_slurm(status):
        state, error = _liveness(run_dir, status, state)
    return RunInfo(run_dir.name, run_dir, state, parsed.label, parsed.spec, parsed.config, status, error,
                   int(job.get("queued_at", 0)), job.get("owner"), bool(parsed.job), bool(job.get("distributed")),
                   parsed.job)


TRAINER = "effnet.train"  # the module a run's process runs: who may be signalled for it


def on_slurm(status: dict[str, Any]) -> bool:
    """A run a cluster scheduler runs is watched through the scheduler (``effnet.queue.slurm``), not by its local pid.
    Marked from the moment it is queued, before sbatch answers: a local runner never takes it in between."""
    return bool(status.get("slurm_job_id")) or status.get("backend") == "slurm"


def status_lock(run_dir: Path) -> contextlib.AbstractContextManager[bool]:
    """``run_dir``'s STATUS_LOCK, held around each read-modify-write of status.json by its writers (the trainer,
    the Slurm watcher, submit, stop). It never creates the folder (a writer whose run was deleted fails with
    ``FileNotFoundError`` instead of bringing it back), and on a shared filesystem without flock it goes ahead
    unlocked rather than fail the run."""
    return locks.exclusive(run_dir / STATUS_LOCK, make_folder=False, unlocked_if_unsupported=True)


def is_run_folder(d: str | os.PathLike) -> bool:
    """A folder counts as a run when it has a job.json, config.json or status.json (a link in its place counts
    too, so it can be shown as damaged and removed)."""
    base = os.fspath(d)
    if os.path.islink(base):
        return True
    return os.path.isdir(base) and any(os.path.lexists(os.path.join(base, f)) for f in (JOB, CONFIG, STATUS))


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """All runs under ``root``, oldest first (queue order for queued ones).

    A folder whose name is not a run id, or any hidden one, is not looked at.
    """
    root = checkpoints_dir(root)
    if not root.is_dir():
        return []
    found = [read_run(root / name) for name in os.listdir(root)
             if is_run_id(name) and is_run_folder(os.path.join(root, name))]
    return sorted(found, key=lambda r: (r.queued_at, r.run_id))


@dataclass(frozen=True)
class Progress:
    fraction: float  # of the whole run, 0..1
    text: str
    eta_s: float | None


def progress(info: RunInfo) -> Progress:
    """Where a run is (epoch, step, phase) and, while it runs, when it should end."""
    s = info.status
    epochs = int(s.get("epochs") or (info.config.epochs if info.config else 1))
    steps, epoch, step = int(s.get("steps") or 0), int(s.get("epoch") or 0), int(s.get("step") or 0)
    if info.state == "finished":
        return Progress(1.0, f"finished {epochs} epoch{'s' if epochs != 1 else ''}", None)
    if not steps or not epoch:  # before the first step: what it waits for (its processes meeting, Slurm starting it)
        phase = s.get("phase") if info.active else None
        return Progress(0.0, f"{info.state}: {phase}" if phase else info.state, None)
    fraction = min(1.0, ((epoch - 1) + step / steps) / epochs)
    if not info.active:
        return Progress(fraction, f"{info.state} at epoch {epoch}/{epochs} · step {step}/{steps}", None)
    text = f"epoch {epoch}/{epochs} · step {step}/{steps}"
    if s.get("phase") == "evaluating":
        text += " · evaluating"
    eta, timed = time_left(s, epochs, epoch, step, steps)
    if eta is None:
        text += " · ETA estimating"
    else:
        text += f" · ETA {'' if timed else '≈ '}{duration(eta) if eta >= 1 else 'a moment'}"
    return Progress(fraction, text, eta)


def time_left(s: dict[str, Any], epochs: int, epoch: int, step: int, steps: int,
              now: float | None = None) -> tuple[float | None, bool]:
    """Seconds until a running run ends, and whether its evaluation has been timed: the steps left at its measured
    pace plus one evaluation per epoch left (``effnet.training.progress.Pace``). (None, False) until a step is timed:
    elapsed over done, the earlier estimate, said 2 min 52 s twelve seconds after Start for a 5-minute run, and
    jumped 1:17 -> 2:11 -> 1:06 within 12 s of a resume.

    Until the first evaluation is timed, its cost is guessed as a forward pass over its images at a third of a
    training step's cost per image (forward only, against forward and backward); the text then says "≈"."""
    step_s, eval_s = s.get("step_s"), s.get("eval_s")
    if not step_s:
        return None, False
    timed = eval_s is not None
    if not timed:
        eval_s = step_s * (s.get("eval_images") or 0) / (3 * (s.get("step_images") or 1))
    left = (epochs - epoch) * (steps * step_s + eval_s)
    if s.get("phase") == "evaluating":
        left += max(0.0, eval_s - ((now or time.time()) - float(s.get("eval_started") or now or time.time())))
    else:
        left += max(0, steps - step) * step_s + eval_s
    return left, timed

