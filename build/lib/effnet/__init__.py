"""effnet: EfficientNet compound scaling you can inspect, build, train and explain.

``ScalingSpec`` and ``model_card`` are pure arithmetic and import instantly; the torch parts
(``build_model``, ``load_pretrained``, ``EfficientNet``) are imported on first use, so a page
that only shows numbers never pays for importing torch.
"""

from __future__ import annotations

from typing import Any

from effnet.card import ModelCard, model_card
from effnet.scaling import OFFICIAL, ScalingSpec

_TORCH_NAMES = {"EfficientNet", "build_model", "load_pretrained"}

__all__ = ["OFFICIAL", "EfficientNet", "ModelCard", "ScalingSpec", "build_model", "load_pretrained", "model_card"]


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from effnet import model

        return getattr(model, name)
    raise AttributeError(f"module 'effnet' has no attribute {name!r}")
