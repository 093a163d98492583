"""One training step and what decides it: the learning-rate schedule, the per-step seeds, SGD, the EMA.

The step works on uint8 images already on the training device: augmentation (``augment``, below) and
preprocessing (``effnet.arch.preprocess``) run there in batches, then forward, loss, backward and the update. It
returns the loss and logits as device tensors, so no step waits for the host. Every random choice of a step
is decided by ``step_seed(seed, epoch, step, rank)``: a resumed run replays exactly what an uninterrupted one
would have done.
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from effnet.arch.preprocess import to_model_input
from effnet.training.config import AUGMENTATIONS, TrainConfig


def lr_at(step: int, total: int, warmup: int, base_lr: float, schedule: str) -> float:
    """Learning rate at global step ``step`` (0-based): linear warmup, then the schedule's decay."""
    if schedule == "onecycle":
        warmup = max(1, int(0.3 * total))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    t = (step - warmup) / max(1, total - warmup)
    floor = base_lr * (1e-4 if schedule == "onecycle" else 0.0)
    return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


def step_seed(*parts: int) -> int:
    """A 63-bit seed from (seed, epoch, step, rank): every step's randomness is reproducible."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum; weight decay on conv and linear weights, not on BatchNorm and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    other = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)


class EMA:
    """Exponential moving average of the weights (buffers are copied), evaluated instead of the raw model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._update = get_ema_multi_avg_fn(decay)  # torch's public EMA rule (a fused lerp over all tensors)
        # Pair the tensors once: updates then touch them in place every step, no dict building.
        self.params = (list(self.model.parameters()), list(model.parameters()))
        self.buffers = list(zip(self.model.buffers(), model.buffers(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        self._update(self.params[0], self.params[1], None)
        for mine, live in self.buffers:
            mine.copy_(live)  # BatchNorm statistics follow the live model


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
               config: TrainConfig, generator: torch.Generator, amp: bool) -> tuple[Tensor, Tensor]:
    """One SGD step on uint8 images: augment and preprocess on their device, forward, backward, update.

    Returns (loss, logits), detached, still on the device (no host sync here).
    """
    x = to_model_input(augment(images, generator, config.augment), config.spec)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def augment(images: Tensor, generator: torch.Generator, policy: str = "standard") -> Tensor:
    """Batched augmentation of uint8 images on their own device.

    standard: 4-pixel zero padding, random 32x32 crop, random horizontal flip (the usual CIFAR recipe);
    cutout: standard plus one 8x8 square zeroed at a random position; none: unchanged.
    """
    if policy == "none":
        return images
    if policy not in AUGMENTATIONS:
        raise ValueError(f"augment: {policy!r} is not one of {', '.join(AUGMENTATIONS)}")
    n, _, h, w = images.shape
    dev = images.device
    pad = 4
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=dev, generator=generator)
    flip = torch.rand(n, 1, 1, device=dev, generator=generator) < 0.5
    rows = dy + torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    cols = dx + torch.where(flip, w - 1 - cols, cols)
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if policy == "cutout":
        size = 8
        cy = torch.randint(0, h, (n, 1, 1), device=dev, generator=generator)
        cx = torch.randint(0, w, (n, 1, 1), device=dev, generator=generator)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        oy, ox = ys - cy + size // 2, xs - cx + size // 2
        hole = (oy >= 0) & (oy < size) & (ox >= 0) & (ox < size)
        out = out * (~hole).unsqueeze(1)
    return out.contiguous()



class StaticStep:
    """``train_step`` over static buffers: the form a CUDA graph can capture, and one code path with the eager step.

    A captured graph replays fixed memory, so every input of the step lives in a tensor allocated once: the
    images and labels (copied in each step), the learning rate (a Python float would be baked into the graph:
    the optimizer's groups hold this tensor instead) and the augmentation generator (reseeded each step, so a
    resumed run replays the same crops and flips). Dropout and stochastic depth draw from the device's default
    generator, which the caller seeds each step as before; CUDA graphs register it themselves.

    ``capture=True`` on CUDA records the step once after ``WARMUP`` eager steps on a side stream (warm-up also
    moves BatchNorm statistics, as the eager steps it stands for would). Anything that refuses capture
    (an op without a graph-safe kernel, DDP, a CPU) leaves the step eager; ``fallback`` says why, and the
    trainer prints it to the run's log. On the CPU the step is eager and gives bitwise the weights of
    ``train_step`` (tests/test_train.py). The capture itself is unmeasured until a GPU is at hand (issue 19).
    """

    WARMUP = 3

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, images: Tensor,
                 labels: Tensor, amp: bool, capture: bool = False) -> None:
        self.model, self.optimizer, self.config, self.amp = model, optimizer, config, amp
        self.images, self.labels = torch.empty_like(images), torch.empty_like(labels)
        device = images.device
        self.lr = torch.tensor(float(optimizer.param_groups[0]["lr"]), dtype=torch.float32, device=device)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
        self.generator = torch.Generator(device=device)
        self.graph: Any = None
        self.out: tuple[Tensor, Tensor] | None = None
        self.fallback: str | None = None if capture else "capture not asked for"
        self._capture_after = self.WARMUP if capture else -1
        if capture and device.type != "cuda":
            self.fallback, self._capture_after = f"CUDA graphs need a CUDA device, not {device.type}", -1

    def __call__(self, images: Tensor, labels: Tensor, lr: float, seed: int) -> tuple[Tensor, Tensor]:
        """One step on ``images``/``labels`` (the static batch size) at learning rate ``lr``; (loss, logits)."""
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.lr.fill_(lr)
        self.generator.manual_seed(seed)
        if self.graph is not None:
            self.graph.replay()
            return self.out
        out = self._body()
        if self._capture_after > 0:
            self._capture_after -= 1
            if self._capture_after == 0:
                self._capture(seed)
        return out

    def _body(self) -> tuple[Tensor, Tensor]:
        return train_step(self.model, self.optimizer, self.images, self.labels, self.config, self.generator,
                          self.amp)

    def _capture(self, seed: int) -> None:
        """Record the step as a CUDA graph (gradients kept allocated: the graph owns their memory)."""
        try:
            self.optimizer.zero_grad(set_to_none=False)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.generator)
            self.generator.manual_seed(seed)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.cuda.graph(graph):
                self.out = self._body()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = graph
        except Exception as exc:  # any refusal leaves the eager step; said in the run's log
            self.graph, self.fallback = None, f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
