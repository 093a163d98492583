"""Evaluation: top-1, top-5, loss and the confusion matrix of a split, with BatchNorm statistics that match the weights.

Why ``precise_bn`` (measured on real handwritten digits, bench/RESULTS.md): BatchNorm keeps running
averages of its batch statistics while training, and on a short run they lag the weights they are meant to
describe. After one epoch (25 steps) of a φ=-3 model the stored statistics gave 10% validation top-1 (chance)
and a loss of 1,248, while the same weights with statistics recomputed over training images gave 68.5%
and 1.06. So every evaluation, and every best.pt, uses a copy of the model whose statistics were recomputed
over a seeded sample of the training images (dropout and stochastic depth off, as at test time), as fvcore
and Detectron2 do ("precise BN"). The training model itself is never touched, so a resumed run still
replays bit for bit.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effnet.arch.preprocess import to_model_input
from effnet.data.cifar import Split
from effnet.training.config import TrainConfig
from effnet.training.step import step_seed

# 256 images measure the statistics as well as 512 or 1,024 (a 1-epoch digits run: 69.5-70.0% validation top-1 with
# 256 over three draws, 68-70% with 512) at half the cost of each evaluation.
PRECISE_BN_IMAGES = 256


@torch.no_grad()
def precise_bn(model: nn.Module, images: Tensor, config: TrainConfig, seed: int, count: int = PRECISE_BN_IMAGES,
               amp: bool = False) -> nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm statistics are the averages over ``count`` training images
    drawn with ``seed`` (a class-sorted dataset must not lend its first classes' statistics to all)."""
    copied = copy.deepcopy(model).eval()
    norms = [m for m in copied.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(images) == 0:
        return copied
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
        norm.train()
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(step_seed(seed, 7)))[:count]
    batch = max(2, min(config.batch_size, count))
    for i in range(0, len(pick), batch):
        x = to_model_input(images[pick[i:i + batch].to(images.device)], config.spec)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            copied(x)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return copied.eval()


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, config: TrainConfig, amp: bool,
             stop: threading.Event | None = None) -> dict[str, Any] | None:
    """top-1/top-5 (percent), loss and the confusion matrix; None if ``stop`` was set midway."""
    spec, batch_size = config.spec, config.eval_batch_size
    was_training = model.training
    model.eval()
    k, n_classes = min(5, spec.num_classes), spec.num_classes
    confusion = torch.zeros(n_classes * n_classes, dtype=torch.long, device=split.labels.device)
    top1 = top5 = 0
    loss = 0.0
    for i in range(0, len(split), batch_size):
        if stop is not None and stop.is_set():
            model.train(was_training)
            return None
        x = to_model_input(split.images[i : i + batch_size], spec)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = split.labels[i : i + batch_size]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == y).sum().item()
        top5 += (best == y[:, None]).any(dim=1).sum().item()
        confusion += torch.bincount(y * n_classes + best[:, 0], minlength=n_classes * n_classes)
    model.train(was_training)
    n = max(1, len(split))
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss / n,
            "confusion": confusion.view(n_classes, n_classes).tolist()}
