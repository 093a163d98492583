"""A training run on disk: ``checkpoints/<run-id>/`` and its files, written atomically.

One module owns the layout so the trainer (writer), the job queue and the app (readers) agree:

    config.json     the spec and the training settings
    status.json     state, pid, heartbeat, progress within the epoch, last error
    metrics.jsonl   one JSON line per finished epoch
    confusion.json  test-set confusion matrices (final and best epoch)
    last.pt         everything needed to resume at the exact step
    best.pt         the weights with the best validation top-1
    log.txt         the process's output (runs started by the job queue)

Checkpoints load with ``weights_only=True``: a checkpoint file can never run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CONFIG, STATUS, METRICS, CONFUSION = "config.json", "status.json", "metrics.jsonl", "confusion.json"
LAST, BEST, LOG, JOB = "last.pt", "best.pt", "log.txt", "job.json"
CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot (or must not) be loaded; the message says why."""


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


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` whole: after a resume it holds each epoch exactly once."""
    atomic_write_bytes(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch rows of a run (a line that is not valid JSON is skipped)."""
    rows = []
    try:
        lines = (run_dir / METRICS).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


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

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} was refused: it holds objects other than tensors and plain values, which could run code "
            f"when loaded ({str(exc).splitlines()[0]})"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an effnet checkpoint (no 'model' weights)")
    return state


def read_classes(run_dir: Path) -> dict[str, Any] | None:
    """The class names a run was trained with (stored in confusion.json): fine, coarse, fine_to_coarse."""
    classes = (read_json(run_dir / CONFUSION) or {}).get("classes")
    return classes if isinstance(classes, dict) else None


def load_model(run_dir: Path, which: str = "best") -> tuple[Any, Any]:
    """(model in eval mode on the CPU, its spec) from a run's ``best.pt`` or ``last.pt``.

    The spec comes from the checkpoint itself (falling back to config.json), so a checkpoint file
    plus this function is all anyone needs to use a model.
    """
    from effnet.model import build_model
    from effnet.scaling import ScalingSpec

    path = run_dir / (BEST if which == "best" else LAST)
    state = load_checkpoint(path)
    spec_dict = state.get("spec") or (read_json(run_dir / CONFIG) or {}).get("spec")
    if not spec_dict:
        raise CheckpointError(f"{path} does not say which model it holds (no spec)")
    spec = ScalingSpec.from_dict(spec_dict)
    model = build_model(spec)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit {spec.name}: {str(exc).splitlines()[0]}") from exc
    return model.eval(), spec
