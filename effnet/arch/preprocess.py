"""How an image becomes the model's input. One function for training, evaluation and CAMs.

The spec alone decides it: resize to ``spec.resolution`` (bilinear, antialiased) and normalise
with the statistics the weights were trained with (CIFAR-100's for models trained here,
ImageNet's for torchvision's weights). Keeping this in one place means a checkpoint plus its
spec is all anyone needs to use a model.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from effnet.arch.scaling import ScalingSpec

# Per-channel mean and std of the training images (RGB, in [0, 1]).
STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def to_model_input(images: Tensor, spec: ScalingSpec) -> Tensor:
    """uint8 images ``(N, 3, H, W)`` (any device) -> normalised float ``(N, 3, R, R)``, R = spec.resolution.

    Square resize without cropping: the whole image is seen, and a CAM maps back onto all of it.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(images.shape)}")
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    size = spec.resolution
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = _stats(spec.normalization, x.device)
    return (x - mean) / std


@lru_cache(maxsize=16)
def _stats(normalization: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """Mean and std as (1, 3, 1, 1) tensors, made once per device (a host-to-GPU copy every step would stall)."""
    mean, std = STATS[normalization]
    return torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1)
