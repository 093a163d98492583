"""Checkpoints: written atomically, loaded without running code, sized before a run starts.

``save_checkpoint`` serialises into memory and then writes atomically (``files.atomic_write_bytes``),
so a kill never leaves half a checkpoint. ``load_checkpoint`` opens without following links and
unpickles with ``weights_only=True``: a checkpoint file holds tensors and plain values, never code.
``check_disk`` refuses a run whose checkpoints the disk could not hold, before anything is written.
"""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path
from typing import Any

from effnet.base import files
from effnet.base.files import atomic_write_bytes
from effnet.training.config import TrainConfig

CHECKPOINT_FORMAT = 1
# Checkpoints on disk at once (last.pt, its temporary copy, best.pt, its copy) and a margin for the rest.
CHECKPOINT_COPIES, DISK_MARGIN_BYTES = 4, 64 * 1024**2


class CheckpointError(RuntimeError):
    """A checkpoint that cannot (or must not) be loaded; the message says why."""


def checkpoint_bytes(config: TrainConfig) -> int:
    """Bytes of one checkpoint of the run: fp32 weights, SGD momentum and the EMA copy when there is one."""
    from effnet.arch import specs

    return 4 * specs.card(config.spec).params * (2 + (config.ema > 0))


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
    import torch

    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint as a dict of tensors and plain values, on the CPU, without running any code."""
    import torch

    try:
        f = files.open_regular(path)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} does not exist") from exc
    except files.Damaged as exc:
        raise CheckpointError(f"{path}: {str(exc).split(': ', 1)[-1]}") from exc  # a link, or not a file
    with f:
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
    version = state.get("format", CHECKPOINT_FORMAT)
    if isinstance(version, bool) or not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format')!r}; this version reads up to "
                              f"{CHECKPOINT_FORMAT} (update effnet-lab)")
    return state
