"""A training run on disk: ``checkpoints/<run-id>/``, its files, and reading it safely.

One module owns the layout so the trainer (writer), the job queue and the pages (readers) agree:

    job.json        a queued run: its config, label, owner, queue position and generation
    label.json      the name a user gave the run (shown everywhere instead of the generated one)
    config.json     the spec and the training settings, as the trainer started them
    status.json     state, pid, heartbeat, progress within the epoch, last error
    metrics.jsonl   one JSON line per finished epoch
    confusion.json  test-set confusion matrices (final and best epoch) and the class names
    last.pt         everything needed to resume at the exact step
    best.pt         the weights with the best validation top-1
    log.txt         the process's output (runs started by the job queue)

On a shared server nothing in a run folder is trusted. A run id is a plain name (``RUN_ID``) and
resolves only to a direct child of the checkpoints folder; files are opened without following
symbolic links and with a size bound; every file is parsed by one validating reader, so a damaged
file makes its run "damaged: <file>: <reason>" instead of breaking a page; checkpoints load with
``weights_only=True``, so a checkpoint file can never run code.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.config import TrainConfig

CONFIG, STATUS, METRICS, CONFUSION = "config.json", "status.json", "metrics.jsonl", "confusion.json"
LAST, BEST, LOG, JOB, LABEL = "last.pt", "best.pt", "log.txt", "job.json", "label.json"
CHECKPOINT_FORMAT = 1
# A run id: letters, digits, dot, dash, underscore; never starting with a dot (no "..", no hidden files).
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")
MAX_JSON_BYTES = 16 * 1024 * 1024
ACTIVE = ("starting", "waiting", "loading data", "running")
ENDED = ("stopped", "finished", "failed")
STATES = ("queued", *ACTIVE, *ENDED)
HEARTBEAT_TIMEOUT_S = 60.0


class CheckpointError(RuntimeError):
    """A checkpoint that cannot (or must not) be loaded; the message says why."""


class Damaged(ValueError):
    """A run file that exists but cannot be used; the message is ``<file>: <reason>``."""


def checkpoints_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$EFFNET_CHECKPOINTS``, else ``./checkpoints``."""
    return Path(path or os.environ.get("EFFNET_CHECKPOINTS") or "checkpoints")


def run_path(root: str | os.PathLike | None, run_id: object) -> Path:
    """The folder of run ``run_id``: a direct child of ``root``, never a symbolic link.

    ``ValueError`` for anything else (``..``, ``a/b``, absolute paths, links), so no caller can be
    steered outside the checkpoints folder by a name.
    """
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(f"run: {run_id!r} is not a run id (letters, digits, '.', '-', '_'; no leading dot)")
    root = checkpoints_dir(root).resolve()
    path = root / run_id
    if path.is_symlink():
        raise ValueError(f"run: {run_id} is a symbolic link; refused")
    if not path.is_dir():
        raise ValueError(f"run: no run {run_id!r} in {root}")
    return path


# ----------------------------------------------------------------------------- reading, safely
def read_file(path: Path, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file, not following a symbolic link; ``FileNotFoundError`` if absent.

    ``Damaged`` for a link, a non-file or a file over ``max_bytes``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == 40 or path.is_symlink():  # ELOOP: the last component is a link
            raise Damaged(f"{path.name}: is a symbolic link; refused") from exc
        if isinstance(exc, FileNotFoundError):
            raise
        raise Damaged(f"{path.name}: cannot be read ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Damaged(f"{path.name}: is not a regular file")
        if info.st_size > max_bytes:
            raise Damaged(f"{path.name}: {info.st_size:,} bytes, more than a run file may have")
        return f.read(max_bytes + 1)


def load_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``; None when missing; ``Damaged`` when present but not a JSON object."""
    try:
        raw = read_file(path)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise Damaged(f"{path.name}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise Damaged(f"{path.name}: expected a JSON object, got {type(data).__name__}")
    return data


def read_json(path: Path) -> dict[str, Any] | None:
    """Lenient ``load_json`` for a writer's own files: None when missing or damaged."""
    try:
        return load_json(path)
    except Damaged:
        return None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_STATUS_FIELDS = {
    "state": lambda v: v in STATES, "pid": _whole, "heartbeat": _number, "started": _number, "ended": _number,
    "epoch": _whole, "epochs": _whole, "step": _whole, "steps": _whole, "running_since": _number,
    "start_fraction": _number, "images_per_second": _number, "generation": _whole, "exit_code": _whole,
    "error": lambda v: v is None or isinstance(v, str), "phase": lambda v: v is None or isinstance(v, str),
    "device": lambda v: isinstance(v, str), "slot": lambda v: isinstance(v, str),
}


def load_status(run_dir: Path) -> dict[str, Any] | None:
    """``status.json``, checked field by field (a garbage status must never read as "queued")."""
    status = load_json(run_dir / STATUS)
    if status is None:
        return None
    if "state" not in status:
        raise Damaged(f"{STATUS}: has no state")
    for key, ok in _STATUS_FIELDS.items():
        if key in status and not ok(status[key]):
            raise Damaged(f"{STATUS}: {key} = {status[key]!r} is not valid")
    return status


def load_job(run_dir: Path) -> dict[str, Any] | None:
    """``job.json``: the queued run's config (validated), label, owner and queue position."""
    job = load_json(run_dir / JOB)
    if job is None:
        return None
    if not _whole(job.get("queued_at", 0)) or not _whole(job.get("generation", 0)):
        raise Damaged(f"{JOB}: queued_at and generation must be whole numbers")
    for key in ("label", "owner", "device"):
        if job.get(key) is not None and not isinstance(job[key], str):
            raise Damaged(f"{JOB}: {key} must be text")
    try:
        job["config"] = TrainConfig.from_dict(job.get("config"))
    except (ValueError, TypeError) as exc:
        raise Damaged(f"{JOB}: {exc}") from exc
    return job


def load_config(run_dir: Path) -> tuple[Any, TrainConfig | None]:
    """(spec, settings) the trainer started with, from ``config.json``; (None, None) when absent."""
    from effnet.scaling import ScalingSpec

    data = load_json(run_dir / CONFIG)
    if data is None:
        return None, None
    try:
        spec = ScalingSpec.from_dict(data.get("spec")) if isinstance(data.get("spec"), dict) else None
        if spec is None:
            raise ValueError("spec: missing")
        train = TrainConfig.from_dict(data["train"]) if "train" in data else None
    except (ValueError, TypeError) as exc:
        raise Damaged(f"{CONFIG}: {exc}") from exc
    return spec, train


def load_label(run_dir: Path) -> str | None:
    """The name a user gave the run (``label.json``), if any."""
    data = load_json(run_dir / LABEL)
    if data is None:
        return None
    label = data.get("label")
    if not isinstance(label, str) or not 1 <= len(label) <= 80:
        raise Damaged(f"{LABEL}: label must be text of 1 to 80 characters")
    return label


# Metrics columns that hold numbers (or null, e.g. val_top1 without a validation split).
METRIC_NUMBERS = ("train_loss", "train_top1", "val_top1", "val_top5", "test_top1", "test_top5", "val_loss",
                  "test_loss", "lr", "epoch_seconds", "images_per_second")


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch rows of a run, each checked; ``Damaged`` names the first bad line."""
    try:
        lines = read_file(run_dir / METRICS).decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise Damaged(f"{METRICS}: line {n} is not valid JSON") from exc
        if not isinstance(row, dict) or not _whole(row.get("epoch")) or row["epoch"] < 1:
            raise Damaged(f"{METRICS}: line {n} has no epoch number")
        bad = [k for k in METRIC_NUMBERS if row.get(k) is not None and not _number(row[k])]
        if bad:
            raise Damaged(f"{METRICS}: line {n}: {bad[0]} = {row[bad[0]]!r} is not a number")
        rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """``load_metrics``, or no rows when the file is damaged (for charts that show what they can)."""
    try:
        return load_metrics(run_dir)
    except Damaged:
        return []


def load_classes(run_dir: Path) -> dict[str, Any] | None:
    """The class names a run was trained with (stored in confusion.json): fine, coarse, fine_to_coarse."""
    classes = (load_json(run_dir / CONFUSION) or {}).get("classes")
    if classes is None:
        return None
    fine, coarse, mapping = (classes.get(k) if isinstance(classes, dict) else None
                             for k in ("fine", "coarse", "fine_to_coarse"))
    if not (isinstance(fine, list) and isinstance(coarse, list) and isinstance(mapping, list)
            and all(isinstance(n, str) for n in fine + coarse) and len(mapping) == len(fine)
            and all(_whole(c) and 0 <= c < len(coarse) for c in mapping)):
        raise Damaged(f"{CONFUSION}: the class names are malformed")
    return classes


def read_classes(run_dir: Path) -> dict[str, Any] | None:
    """``load_classes``, or None when missing or damaged."""
    try:
        return load_classes(run_dir)
    except Damaged:
        return None


# ----------------------------------------------------------------------------- writing, atomically
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; runs are meant to be shared and read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def write_status(path: Path, fields: dict[str, Any]) -> None:
    """``write_json`` for status.json, which must say "failed: disk full" even on a full disk.

    The atomic write needs room for a second copy; when there is none, the small file is
    overwritten in place (its old blocks are reused), so the reason still reaches the pages.
    """
    try:
        write_json(path, fields)
    except OSError as exc:
        if exc.errno != errno.ENOSPC or not path.is_file() or path.is_symlink():
            raise
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "wb") as f:
            data = json.dumps(fields).encode()
            f.write(data)
            f.truncate(len(data))


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` whole: after a resume it holds each epoch exactly once."""
    atomic_write_bytes(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


# ----------------------------------------------------------------------------- checkpoints
# Checkpoints on disk at once (last.pt, its temporary copy, best.pt, its copy) and a margin for the rest.
CHECKPOINT_COPIES, DISK_MARGIN_BYTES = 4, 64 * 1024**2


def checkpoint_bytes(config: TrainConfig) -> int:
    """Bytes of one checkpoint of the run: fp32 weights, SGD momentum and the EMA copy when there is one."""
    from effnet.card import model_card

    return 4 * model_card(config.spec).params * (2 + (config.ema > 0))


def check_disk(config: TrainConfig, folder: Path) -> None:
    """Refuse to start when the disk holding ``folder`` cannot take a few of the run's checkpoints."""
    need = CHECKPOINT_COPIES * checkpoint_bytes(config) + DISK_MARGIN_BYTES
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if free < need:
        raise ValueError(f"disk: {probe} has {free / 1024**2:.0f} MB free; this run's checkpoints need about "
                         f"{need / 1024**2:.0f} MB. Free some space (delete old runs) first")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` into memory, then an atomic write: a kill never leaves half a checkpoint."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint as a dict of tensors and plain values, on the CPU, without running any code."""
    import pickle

    import torch

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} does not exist") from exc
    except OSError as exc:
        raise CheckpointError(f"{path} was refused: {'it is a symbolic link' if path.is_symlink() else exc}") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CheckpointError(f"{path} is not a regular file")
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{path} was refused: it holds objects other than tensors and plain values, which could run code "
                f"when loaded ({str(exc).splitlines()[0]})"
            ) from exc
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not an effnet checkpoint (no 'model' weights)")
    if not _whole(state.get("format", CHECKPOINT_FORMAT)) or state.get("format", CHECKPOINT_FORMAT) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format')!r}; this version reads up to "
                              f"{CHECKPOINT_FORMAT} (update effnet-lab)")
    return state


def shown_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a page shows or explains: best.pt (best validation), else last.pt, else None."""
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
    from effnet.model import build_model
    from effnet.scaling import ScalingSpec

    path = checkpoint or shown_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir.name} has no checkpoint yet")
    state = load_checkpoint(path)
    try:
        spec_dict = state.get("spec") or (load_json(run_dir / CONFIG) or {}).get("spec")
        if not isinstance(spec_dict, dict):
            raise CheckpointError(f"{path} does not say which model it holds (no spec)")
        spec = ScalingSpec.from_dict(spec_dict)
        model = build_model(spec)
    except (Damaged, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its spec cannot be used ({exc})") from exc
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit {spec.name}: {str(exc).splitlines()[0]}") from exc
    return model.eval(), spec


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

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def damaged(self) -> bool:
        return self.state == "damaged"


def describe(spec: Any, config: TrainConfig | None = None) -> str:
    """A label that tells runs apart: model, epochs, training images, scratch or fine-tuned.

    ``B0 · 3 ep · 2,000 img`` beside ``B0 · 200 ep · all img · fine-tuned``: the same model trained two
    ways must not look like one result.
    """
    parts = [spec.name]
    if config is not None:
        parts.append(f"{config.epochs} ep")
        parts.append(f"{config.subset:,} img" if config.subset else "all img")
        if config.pretrained:
            parts.append("fine-tuned")
    return " · ".join(parts)


def pid_alive(pid: object) -> bool:
    """Whether a process with ``pid`` runs (a zombie, exited but not reaped, does not)."""
    if not _whole(pid) or pid <= 0:
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


def log_tail(run_dir: Path, lines: int = 15) -> str:
    try:
        return "\n".join(read_file(run_dir / LOG, 64 * MAX_JSON_BYTES)[-16384:].decode(errors="replace")
                         .splitlines()[-lines:])
    except (OSError, Damaged):
        return ""


def read_run(run_dir: Path) -> RunInfo:
    """A run's state from its files, with dead processes detected and damaged files reported."""
    try:
        if run_dir.is_symlink():
            raise Damaged(f"{run_dir.name}: the run folder is a symbolic link; refused")
        status, job, (spec, config) = load_status(run_dir), load_job(run_dir), load_config(run_dir)
        named = load_label(run_dir)
    except Damaged as exc:
        return RunInfo(run_dir.name, run_dir, "damaged", run_dir.name, None, None, {}, f"damaged: {exc}")
    status = status or {}
    config = config or (job or {}).get("config")
    spec = spec or (config.spec if config is not None else None)
    state = status.get("state", "queued" if job else "unknown")
    error = status.get("error")
    if state in ACTIVE:
        age = time.time() - float(status.get("heartbeat", 0) or 0)
        alive = pid_alive(status.get("pid"))
        if not alive or age > HEARTBEAT_TIMEOUT_S:
            state = "failed"
            why = "its process is gone" if not alive else f"no heartbeat for {age:.0f} s"
            error = f"The training process died ({why}: killed, out of memory, or the machine restarted)."
            tail = log_tail(run_dir)
            if tail:
                error += "\nLast output:\n" + tail
    job = job or {}
    label = named or job.get("label") or (describe(spec, config) if spec is not None else run_dir.name)
    return RunInfo(run_dir.name, run_dir, state, label, spec, config, status, error, int(job.get("queued_at", 0)),
                   job.get("owner"), bool(job), bool(job.get("distributed")))


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """All runs under ``root``, oldest first (queue order for queued ones).

    A folder counts as a run when it has a job.json, config.json or status.json; a folder whose
    name is not a run id, or any hidden one, is not looked at.
    """
    root = checkpoints_dir(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if not RUN_ID.fullmatch(d.name):
            continue
        if d.is_symlink() or (d.is_dir() and any((d / f).exists() or (d / f).is_symlink()
                                                  for f in (JOB, CONFIG, STATUS))):
            found.append(read_run(d))
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
            text += f" · ETA {duration(eta)}"
    return Progress(fraction, text, eta)


def duration(seconds: float) -> str:
    """``95`` -> ``1 min 35 s``: how long, for people."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"
