"""The conventional networks the study cites, beside EfficientNet: ResNet, MobileNetV2, DenseNet (torchvision's).

A ``BaselineSpec`` names one and goes through the same machinery as a ``ScalingSpec``: the trainer, the queue,
studies, bundles, Results, CAMs and compression all take either (``effnet.arch.specs``).

- ``geometry="imagenet"``: torchvision's model as it is, so ``--pretrained`` loads its ImageNet weights strictly.
- ``geometry="cifar"``: the standard adaptation for 32 px images: the first convolution becomes 3x3 with
  stride 1 and the max-pool after it goes (MobileNetV2 has none; its first convolution keeps 3x3, stride 1).
  Without it a 32 px image is 1x1 after ResNet's stem and pool, as EfficientNet's paper geometry is.

Their cards cannot be worked out by arithmetic as EfficientNet's are, so ``card`` builds the model once and counts:
parameters exactly, multiply-adds with ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add),
the activations autograd saves, per top-level module. The count is kept in memory and on disk
(``$EFFNET_CACHE`` or ``~/.cache/effnet-lab``), so a page or the queue asks torch once per machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from effnet.arch.card import ModelCard, StageRow
from effnet.arch.scaling import DEFAULT_BASE_RESOLUTION, GEOMETRIES, MAX_CLASSES, MIN_RESOLUTION, NORMALIZATIONS
from effnet.base.files import atomic_write_bytes

# torchvision's name -> (what the pages call it, its classifier's module name)
MODELS: dict[str, tuple[str, str]] = {
    "resnet18": ("ResNet-18", "fc"),
    "resnet34": ("ResNet-34", "fc"),
    "resnet50": ("ResNet-50", "fc"),
    "mobilenet_v2": ("MobileNetV2", "classifier"),
    "densenet121": ("DenseNet-121", "classifier"),
}
CARD_FORMAT = 3


@dataclass(frozen=True)
class BaselineSpec:
    """A conventional network (one of ``MODELS``) for a geometry, class count and input statistics."""

    model: str = "resnet18"
    geometry: str = "cifar"
    num_classes: int = 100
    normalization: str = "cifar100"
    base_resolution: int | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model: {self.model!r} is not one of {', '.join(MODELS)}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry: {self.geometry!r} is not one of {', '.join(GEOMETRIES)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization: {self.normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
                or not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes: must be a whole number from 1 to {MAX_CLASSES:,}, got {self.num_classes!r}")
        if self.base_resolution is not None and (isinstance(self.base_resolution, bool) or not isinstance(
                self.base_resolution, int) or self.base_resolution < MIN_RESOLUTION):
            raise ValueError(f"base_resolution: must be at least {MIN_RESOLUTION} px, got {self.base_resolution!r}")

    # What the rest of the lab asks of a spec (EfficientNet's ScalingSpec answers the same).
    variant = None
    scaling = "compound"

    @property
    def name(self) -> str:
        return MODELS[self.model][0]

    @property
    def resolution(self) -> int:
        return self.base_resolution or DEFAULT_BASE_RESOLUTION[self.geometry]

    @property
    def is_official(self) -> bool:
        return False

    @property
    def has_imagenet_weights(self) -> bool:
        """torchvision's ImageNet weights fit only the model as it is (the imagenet geometry)."""
        return self.geometry == "imagenet"

    @property
    def head(self) -> str:
        """The classifier's module name: a model fine-tuned on other classes gets a new one."""
        return MODELS[self.model][1]

    def replace(self, **changes: object) -> BaselineSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BaselineSpec:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"spec: unknown fields {sorted(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the models (torch from here on)
def build(spec: BaselineSpec) -> Any:
    """torchvision's model for ``spec``, adapted to the cifar geometry when asked (see the module's docstring)."""
    import torchvision.models as tvm
    from torch import nn

    model = getattr(tvm, spec.model)(num_classes=spec.num_classes)
    if spec.geometry == "cifar":
        if spec.model.startswith("resnet"):
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif spec.model == "densenet121":
            conv = model.features.conv0
            model.features.conv0 = nn.Conv2d(3, conv.out_channels, 3, 1, 1, bias=False)
            model.features.pool0 = nn.Identity()
        else:  # mobilenet_v2: its stem is a 3x3 conv already; stride 1
            model.features[0][0].stride = (1, 1)
    return model


def stages(model: Any) -> list[tuple[str, Any]]:
    """The model's stages in order, as the card lists them and CAMs can target them: its top-level modules,
    with a ``features`` Sequential (MobileNetV2's, DenseNet's) opened one level (``features.3``)."""
    from torch import nn

    out = []
    for name, module in model.named_children():
        if name == "features" and isinstance(module, nn.Sequential):
            out += [(f"features.{child}", m) for child, m in module.named_children()]
        else:
            out.append((name, module))
    return out


def imagenet_weights(spec: BaselineSpec) -> Any:
    """torchvision's ImageNet-1K weights enum for ``spec`` (its ``.url``, its ``.meta``)."""
    import torchvision.models as tvm

    return tvm.get_model_weights(spec.model).IMAGENET1K_V1


def _cache_file() -> Path:
    return Path(os.environ.get("EFFNET_CACHE") or Path.home() / ".cache" / "effnet-lab") / "baseline-cards.json"


# The cards of the classroom's usual baselines (every network, both geometries, 100 classes, and ImageNet's 1000),
# counted once and shipped with the lab: the explorer shows them at once, without importing torch. A fresh count
# must equal them (tests/test_baselines.py); ``write_shipped()`` redoes the file after a torchvision upgrade.
SHIPPED = Path(__file__).with_name("baseline_cards.json")


def shipped_specs() -> list[BaselineSpec]:
    """The specs whose cards ship with the lab."""
    return [BaselineSpec(model=m, geometry=g, num_classes=n) for m in MODELS
            for g, n in (("cifar", 100), ("imagenet", 100), ("imagenet", 1000))]


def _key(spec: BaselineSpec) -> str:
    """What a card depends on, as a cache key (not the input statistics: they change no count)."""
    from importlib.metadata import version

    return json.dumps({"model": spec.model, "geometry": spec.geometry, "num_classes": spec.num_classes,
                       "resolution": spec.resolution, "format": CARD_FORMAT, "torchvision": version("torchvision")},
                      sort_keys=True)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def is_counted(spec: BaselineSpec) -> bool:
    """Whether the card is at hand (shipped, or counted on this machine before): no torch, no wait."""
    return _key(spec) in _read(SHIPPED) or _key(spec) in _read(_cache_file())


def write_shipped() -> None:
    """Count the shipped specs again and write ``SHIPPED`` (run after a torchvision upgrade)."""
    atomic_write_bytes(SHIPPED, json.dumps({_key(s): _count(s) for s in shipped_specs()}, indent=0,
                                           sort_keys=True).encode())


def _count(spec: BaselineSpec) -> list[dict[str, Any]]:
    """Per top-level module: params, MACs (FlopCounterMode / 2), activations saved for backward, in/out sizes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = build(spec).train()
    children = stages(model)
    rows = [{"name": name, "operator": type(m).__name__, "params": sum(p.numel() for p in m.parameters()),
             "macs": 0, "activations": 0, "input_size": 0, "output_size": 0, **_shape(m)} for name, m in children]
    current = {"i": 0}
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            rows[current["i"]]["activations"] += t.numel()
        return t

    handles = []
    for i, (_, m) in enumerate(children):
        def pre(_m, args, i=i):
            current["i"] = i
            rows[i]["input_size"] = args[0].shape[-1] if args and args[0].ndim == 4 else 1
            rows[i]["in_channels"] = args[0].shape[1]

        def post(_m, _args, out, i=i):
            rows[i]["output_size"] = out.shape[-1] if out.ndim == 4 else 1
            rows[i]["out_channels"] = out.shape[1]

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    x = torch.zeros(1, 3, spec.resolution, spec.resolution)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # a training step: what backward needs
        model(x).sum().backward()
    for h in handles:
        h.remove()
    counter = FlopCounterMode(display=False)  # the multiply-adds of inference, as for EfficientNet's cards
    with counter, torch.no_grad():
        model.eval()(x)
    forward = {name: 0 for name, _ in children}
    for module, counts in counter.get_flop_counts().items():  # "Global", "ResNet", "ResNet.layer1", ...
        name = module.partition(".")[2]
        if name in forward:
            forward[name] = sum(counts.values())
    for row in rows:
        row["macs"] = forward[row["name"]] // 2
        # The stage's stride as it ran: how much smaller its map is (None for what has no convolution).
        row["stride"] = row["input_size"] // row["output_size"] if row["kernel"] is not None else None
    return rows


def _shape(module: Any) -> dict[str, Any]:
    """A stage's spatial kernel (its largest convolution's: a bottleneck's 3x3, not its 1x1s; None without a
    convolution: pooling, a classifier) and its blocks; its stride is measured when it runs (``_count``)."""
    from torch import nn

    kernels = [m.kernel_size[0] for m in module.modules() if isinstance(m, nn.Conv2d)]
    children = list(module.children())
    # Repeated blocks (ResNet's BasicBlocks, DenseNet's _DenseLayers) count; a conv-norm-activation run is one.
    same = len(children) > 1 and len({type(c) for c in children}) == 1 and bool(list(children[0].children()))
    blocks = len(children) if same else 1
    return {"kernel": max(kernels) if kernels else None, "repeats": blocks}


def _stored(spec: BaselineSpec) -> list[dict[str, Any]]:
    """The counted rows for ``spec``: shipped, or from this machine's cache, else counted now (seconds: torch)."""
    key = _key(spec)
    shipped = _read(SHIPPED)
    if key in shipped:
        return shipped[key]
    path = _cache_file()
    cached = _read(path)
    if key not in cached:
        cached[key] = _count(spec)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps(cached).encode())
        except OSError:
            pass  # a read-only home: counted again next time, nothing worse
    return cached[key]


@functools.lru_cache(maxsize=64)
def card(spec: BaselineSpec) -> ModelCard:
    """The card of a baseline: exact parameters and counted multiply-adds, per stage (``stages``)."""
    rows = tuple(StageRow(r["name"], r["operator"], r["kernel"], r["stride"], r["in_channels"], r["out_channels"],
                          r["repeats"], r["input_size"], r["output_size"], r["params"], r["macs"], r["activations"])
                 for r in _stored(spec))
    return ModelCard(spec, rows)
