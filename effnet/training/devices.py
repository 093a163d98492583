"""The machine's training devices and their memory, found without importing torch, and the one rule for "fits".

Importing torch costs seconds (6.3 s measured for a runner start on the 2-core machine, against 0.26 s
without it), and the queue's runner, ``jobs list`` and the explorer only need to know which GPUs exist
and how much memory each has. ``nvidia-smi`` says both; ``CUDA_VISIBLE_DEVICES`` is honoured as CUDA
would honour it. Only on a machine with an NVIDIA driver but no ``nvidia-smi`` does this ask torch.

``check_memory`` is the one rule every page and the queue use: a run may plan to use ``MEMORY_SHARE`` of
its device's memory (the GPU's, or this machine's RAM), by the model card's estimate.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A run may plan to use this share of the device's memory; the rest is the framework's and the system's.
MEMORY_SHARE = 0.9
DEVICES_ENV = "EFFNET_DEVICES"  # e.g. "cuda:0,cuda:1"; "cpu#0,cpu#1" simulates two slots on the CPU


@dataclass(frozen=True)
class Gpu:
    index: int  # as torch numbers it (after CUDA_VISIBLE_DEVICES)
    name: str
    memory_bytes: int


def _visible(indices: list[int]) -> list[int]:
    """The physical GPU indices CUDA shows this process, in CUDA's order (``CUDA_VISIBLE_DEVICES``)."""
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is None:
        return indices
    shown = []
    for part in wanted.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) not in indices:
            break  # CUDA stops at the first entry it cannot use (a UUID or a typo hides the rest)
        shown.append(int(part))
    return shown


DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?")  # what --device may name


def check_device(device: object) -> None:
    """``ValueError`` saying why unless this machine can run on ``device`` (auto, cpu, cuda or cuda:N)."""
    if not isinstance(device, str) or DEVICE.fullmatch(device) is None:
        raise ValueError(f"device: must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device: CUDA was asked for but no GPU is available here (use --device cpu or auto)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device: {device} does not exist here ({torch.cuda.device_count()} GPUs: cuda:0 ...)")


@functools.cache
def gpus() -> tuple[Gpu, ...]:
    """The GPUs this process can train on (cached for the process's life)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        if Path("/proc/driver/nvidia/gpus").is_dir():  # a driver but no nvidia-smi: ask torch after all
            import torch

            return tuple(Gpu(i, torch.cuda.get_device_name(i), int(torch.cuda.get_device_properties(i).total_memory))
                         for i in range(torch.cuda.device_count()))
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    physical = {}
    for line in out.strip().splitlines():
        index, name, mib = (p.strip() for p in line.split(","))
        physical[int(index)] = (name, int(float(mib)) * 1024**2)
    return tuple(Gpu(i, *physical[p]) for i, p in enumerate(_visible(sorted(physical))))


def ram_bytes() -> int:
    """This machine's memory (what a CPU run can have at most)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_bytes(device: str) -> int:
    """Memory a run on ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) will have: its GPU's, or the RAM."""
    found = gpus()
    if found and (device == "auto" or device.startswith("cuda")):
        index = int(device.split(":")[1]) if ":" in device else 0
        return found[index].memory_bytes if index < len(found) else 0
    return ram_bytes()


def device_name(device: str) -> str:
    """``cuda:0`` -> ``NVIDIA H100 80GB HBM3 (cuda:0)``; ``cpu`` -> ``this machine's CPU``."""
    found = gpus()
    if found and (device == "auto" or device.startswith("cuda")):
        index = int(device.split(":")[1]) if ":" in device else 0
        if index < len(found):
            return f"{found[index].name} (cuda:{index})"
    return "this machine's CPU"


def check_memory(card: Any, batch_size: int, device: str) -> None:
    """``ValueError`` (naming batch_size) when training ``card``'s model at ``batch_size`` needs more than
    ``MEMORY_SHARE`` of ``device``'s memory, by the card's estimate (activations, weights, gradients, momentum)."""
    need = card.train_memory_bytes(batch_size)
    have = memory_bytes(device)
    if need > MEMORY_SHARE * have:
        raise ValueError(
            f"batch_size: {card.spec.name} at batch {batch_size} needs about {need / 1024**3:.1f} GiB to train; "
            f"{device_name(device)} has {have / 1024**3:.1f} GiB, of which a run may use "
            f"{MEMORY_SHARE * have / 1024**3:.1f} GiB. Lower the batch size or φ, or train on a larger GPU")


# ----------------------------------------------------------------------------- the queue's device slots
def device_slots() -> list[str]:
    """Where the queue trains, one run per slot at a time: ``$EFFNET_DEVICES``, else each GPU, else the CPU.

    A slot is a device name (``cuda:1``); ``cpu#0,cpu#1`` gives two CPU slots, which simulates a
    two-GPU server on a machine without one (tests use it).
    """
    listed = [d.strip() for d in os.environ.get(DEVICES_ENV, "").split(",") if d.strip()]
    if listed:
        return listed
    return [f"cuda:{g.index}" for g in gpus()] or ["cpu"]


def slot_device(slot: str) -> str:
    """The torch device of a slot: ``cpu#1`` -> ``cpu``."""
    return slot.split("#")[0]


def device_lock(root: Path, slot: str) -> Path:
    """The lock a run holds while it trains on ``slot``."""
    return root / f".device-{re.sub(r'[^A-Za-z0-9]+', '-', slot)}.lock"


def cpu_locks(root: Path) -> list[Path]:
    """The device locks of the queue's CPU slots: work that times the CPU (compression) holds them all, so
    training and measuring never share the cores (each waits for the other)."""
    return [device_lock(root, s) for s in device_slots() if slot_device(s) == "cpu"]
