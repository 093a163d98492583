"""The paper's Figure 1 from torchvision's own measurements: ImageNet top-1 against parameters.

Every torchvision classification model's weights carry their metadata (``weights.meta``): ImageNet-1K acc@1,
the parameter count and GFLOPS, as torchvision measured them with its own training recipes. It ships with
torchvision, so the figure needs no internet. The paper's Figure 1 plots the authors' numbers; these are
torchvision's (its EfficientNets are ports of the paper's weights, so B0-B7 sit close to the paper's curve).

``IMAGENET1K_V1`` is each model's first, original-recipe weights: the ones the papers compared (ResNet-50's V2
weights reach 80.9% with a 2021 recipe, which would compare recipes, not architectures).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

# Family of each model, by torchvision's name prefix (first match wins); the rest are "other".
FAMILIES = (
    ("efficientnet_v2", "EfficientNetV2"),
    ("efficientnet_b", "EfficientNet B0-B7"),
    ("resnext", "ResNeXt"),
    ("wide_resnet", "Wide ResNet"),
    ("resnet", "ResNet"),
    ("densenet", "DenseNet"),
    ("mobilenet", "MobileNet"),
    ("mnasnet", "MnasNet"),
    ("regnet", "RegNet"),
    ("inception", "Inception / GoogLeNet"),
    ("googlenet", "Inception / GoogLeNet"),
    ("convnext", "ConvNeXt"),
    ("vit", "ViT"),
    ("swin", "Swin"),
)
EFFICIENTNET = "EfficientNet B0-B7"
SOURCE = "torchvision's ImageNet-1K measurements (weights.meta, IMAGENET1K_V1 weights)"


@dataclass(frozen=True)
class ZooModel:
    name: str  # torchvision's name, e.g. "resnet50"
    family: str
    params: int
    gflops: float
    top1: float  # ImageNet-1K acc@1, percent


def family(name: str) -> str:
    return next((label for prefix, label in FAMILIES if name.startswith(prefix)), "other")


@functools.lru_cache(maxsize=1)
def imagenet_models() -> tuple[ZooModel, ...]:
    """Every torchvision classification model with original ImageNet-1K weights, sorted by parameters."""
    import torchvision.models as tvm

    out = []
    for name in tvm.list_models(module=tvm):
        weights = getattr(tvm.get_model_weights(name), "IMAGENET1K_V1", None)
        metrics = (weights.meta.get("_metrics") or {}).get("ImageNet-1K", {}) if weights is not None else {}
        if "acc@1" in metrics:
            out.append(ZooModel(name, family(name), int(weights.meta["num_params"]),
                                float(weights.meta.get("_ops", 0.0)), float(metrics["acc@1"])))
    return tuple(sorted(out, key=lambda m: m.params))
