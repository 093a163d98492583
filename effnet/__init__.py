"""effnet: EfficientNet compound scaling you can inspect, build, train and explain.

The package is drawn by layer; each subpackage may import only those below it (its docstring says which, and
tests/test_architecture.py checks it):

    base         files, schemas, zips, access rules, locks, processes, text       (imports nothing of effnet)
    arch, data   the model description and its arithmetic; the images            (base)
    training     one run, top to bottom                                           (base, arch, data)
    analysis     tables, charts, CAMs of finished runs                            (... training)
    compression  int8 and pruned variants of a finished run                       (... training)
    queue        the queue, the runner, Slurm                                      (... training, compression)
    experiments  studies of many runs, bundles                                     (everything below)
    effnet.*     the commands (``python -m effnet.train``, ``.jobs``, ...) and ``housekeeping``: the top

``ScalingSpec`` and ``model_card`` are pure arithmetic and import instantly; the torch parts
(``build_model``, ``load_pretrained``, ``EfficientNet``) are imported on first use, so a page
that only shows numbers never pays for importing torch.
"""

from __future__ import annotations

from typing import Any

from effnet.arch.card import ModelCard, model_card
from effnet.arch.scaling import OFFICIAL, ScalingSpec

_TORCH_NAMES = {"EfficientNet", "build_model", "load_pretrained"}

__all__ = ["OFFICIAL", "EfficientNet", "ModelCard", "ScalingSpec", "build_model", "load_pretrained", "model_card"]


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from effnet.arch import model

        return getattr(model, name)
    raise AttributeError(f"module 'effnet' has no attribute {name!r}")
