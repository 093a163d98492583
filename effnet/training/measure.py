"""MACs are not speed: time a spec's forward pass and training step on this machine.

One measurement runs at a time per process (a lock), so several app users pressing "measure"
share the cores in turn instead of slowing each other down, and each is bounded in time.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass

from effnet.arch import specs
from effnet.arch.scaling import ScalingSpec
from effnet.training.devices import check_memory

_LOCK = threading.Lock()


@dataclass(frozen=True)
class Speed:
    device: str
    latency_ms: float  # one image, inference
    train_images_per_s: float  # full SGD steps at ``batch_size``
    batch_size: int


# Multiply-adds per second a training step sustains on a 2-core CPU like the project's (forward + backward is
# about 3x the forward's MACs): B0 cifar trains at ~40 img/s x 3 x 116 M MACs (bench/train_throughput.py).
CPU_TRAIN_MACS_PER_S = 14e9
# A CPU run longer than this per epoch is refused: it cannot show anything in a class, or in a day.
MAX_CPU_EPOCH_S = 24 * 3600


def cpu_seconds(spec: ScalingSpec, images: int) -> float:
    """Estimated seconds to train ``images`` images of ``spec`` on this kind of CPU (from the card, no model)."""
    return 3 * specs.card(spec).macs * images / CPU_TRAIN_MACS_PER_S


# Most calls ``measure_speed`` times: small models reach these long before the time budget.
INFER_REPS, STEP_REPS = 20, 5
# The first measurement in a process also imports torch and the model code: 4.4 s on the 2-core machine
# (bench/measure_estimate.py), more than the timing itself for small models.
FIRST_IMPORT_S = 4.5


def _timed_estimate_s(call_s: float, budget_s: float, max_reps: int) -> float:
    """What ``_timed`` spends: one warm-up call, then calls until the budget is spent or ``max_reps`` are done."""
    reps = min(max_reps, max(1, math.ceil(budget_s / call_s)))
    return call_s * (1 + reps)


def measure_estimate_s(spec: ScalingSpec, batch_size: int, budget_s: float = 4.0, cold: bool | None = None) -> float:
    """About how long ``measure_speed`` takes on the CPU (the explorer's spinner promises it): the imports when
    ``cold`` (by default: when this process has not loaded the model code yet), a second to build the model,
    then the timed loops as ``_timed`` runs them (a forward pass is about a third of a step)."""
    step, infer = cpu_seconds(spec, batch_size), cpu_seconds(spec, 1) / 3
    if cold is None:
        cold = "effnet.arch.model" not in sys.modules
    return (FIRST_IMPORT_S * cold + 1.0 + _timed_estimate_s(infer, budget_s / 2, INFER_REPS)
            + _timed_estimate_s(step, budget_s / 2, STEP_REPS))


def _timed(fn, budget_s: float, max_reps: int) -> float:
    """Best seconds per call after one warm-up call, repeating within ``budget_s``."""
    fn()
    best, spent, reps = float("inf"), 0.0, 0
    while reps < max_reps and (reps == 0 or spent < budget_s):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, spent, reps = min(best, took), spent + took, reps + 1
    return best


def measure_speed(spec: ScalingSpec, batch_size: int = 32, device: str = "cpu", budget_s: float = 4.0) -> Speed:
    """Inference latency (batch 1) and training throughput (``batch_size``) of a fresh model."""
    check_memory(specs.card(spec), batch_size, device)
    import torch
    import torch.nn.functional as F

    from effnet.arch.model import build_model

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with _LOCK:
        model = build_model(spec, dev).to(memory_format=torch.channels_last)
        size = spec.resolution
        one = torch.randn(1, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
        batch = torch.randn(batch_size, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, spec.num_classes, (batch_size,), device=dev)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        @torch.no_grad()
        def infer() -> None:
            model(one)
            sync()

        def step() -> None:
            loss = F.cross_entropy(model(batch), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync()

        model.eval()
        latency = _timed(infer, budget_s / 2, INFER_REPS)
        model.train()
        step_s = _timed(step, budget_s / 2, STEP_REPS)
    return Speed(str(dev), 1e3 * latency, batch_size / step_s, batch_size)
