"""A model spec of either kind: an EfficientNet (``ScalingSpec``) or a conventional network (``BaselineSpec``).

The trainer, the queue, the run files, Results, CAMs and compression take either. A spec's JSON form says which
it is: a baseline's has ``"model"``. ``card`` is each kind's model card (EfficientNet's worked out by arithmetic,
a baseline's counted once per machine).
"""

from __future__ import annotations

from typing import Any

from effnet.arch.baselines import BaselineSpec
from effnet.arch.baselines import card as baseline_card
from effnet.arch.card import ModelCard, model_card
from effnet.arch.scaling import ScalingSpec

Spec = ScalingSpec | BaselineSpec


def from_dict(data: object) -> Spec:
    """The spec a JSON object describes (``ValueError``/``TypeError`` naming the field when it does not)."""
    if not isinstance(data, dict):
        raise ValueError("spec: expected a JSON object")
    return BaselineSpec.from_dict(data) if "model" in data else ScalingSpec.from_dict(data)


def card(spec: Any) -> ModelCard:
    """The model card of either kind of spec."""
    return baseline_card(spec) if isinstance(spec, BaselineSpec) else model_card(spec)


def is_spec(value: object) -> bool:
    return isinstance(value, ScalingSpec | BaselineSpec)
