"""EfficientNet built from a ``ScalingSpec``: stem, the MBConv (or Fused-MBConv) stages, head.

Module names mirror torchvision's (``features.0`` stem, ``features.1``-``features.7`` stages,
``features.8`` head conv, ``classifier.1`` the linear layer; V2-S has six stages), so torchvision's
ImageNet weights for B0-B7 and V2-S/M/L load with ``strict=True`` and the paper's stem/stages/head
structure stays visible. All shapes come from the spec; this file only turns them into modules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from effnet.arch.baselines import BaselineSpec
from effnet.arch.baselines import build as build_baseline
from effnet.arch.card import model_card
from effnet.arch.scaling import CBAM_SPATIAL_KERNEL, STOCHASTIC_DEPTH, Block, ScalingSpec


class ConvBNAct(nn.Sequential):
    """Conv (no bias, "same" padding) -> BatchNorm -> optional SiLU. Indices 0/1/2 as torchvision."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True, bn: tuple[float, float] = (1e-5, 0.1)) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn[0], momentum=bn[1]),
        ]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> 1x1 (squeeze) -> SiLU -> 1x1 (excite) -> sigmoid gate."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(s))))


class ECA(nn.Module):
    """Efficient channel attention: global pool -> 1-D conv across the channels (no bottleneck) -> sigmoid gate."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = self.conv(x.mean((2, 3)).unsqueeze(1))  # (N, 1, C): the channels as a sequence
        return x * torch.sigmoid(s).transpose(1, 2).unsqueeze(-1)


class CBAM(nn.Module):
    """Channel then spatial attention: an SE-style MLP shared by average- and max-pooled features, then a 7x7 conv
    over the channel-wise average and max. SiLU in the MLP, as in the network's SE."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.spatial = nn.Conv2d(2, 1, CBAM_SPATIAL_KERNEL, padding=CBAM_SPATIAL_KERNEL // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        mlp = lambda s: self.fc2(nn.functional.silu(self.fc1(s)))  # noqa: E731
        x = x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def attention(block: Block) -> list[nn.Module]:
    """The block's attention module on its expanded channels ([] for none)."""
    if block.attention == "se":
        return [SqueezeExcite(block.expanded, block.squeeze)]
    if block.attention == "eca":
        return [ECA(block.eca_kernel)]
    if block.attention == "cbam":
        return [CBAM(block.expanded, block.squeeze)]
    return []


def block_layers(block: Block, bn: tuple[float, float]) -> list[nn.Module]:
    """MBConv: expand 1x1 -> depthwise kxk -> attention -> project 1x1. Fused-MBConv: expand kxk -> project 1x1,
    or one kxk conv without expansion (torchvision's order, so its weights load by index)."""
    mid, cin, cout = block.expanded, block.in_channels, block.out_channels
    if block.fused:
        if not block.has_expansion:
            return [ConvBNAct(cin, cout, block.kernel, block.stride, bn=bn)]
        return [ConvBNAct(cin, mid, block.kernel, block.stride, bn=bn), ConvBNAct(mid, cout, 1, act=False, bn=bn)]
    expand = [ConvBNAct(cin, mid, 1, bn=bn)] if block.has_expansion else []
    return [*expand, ConvBNAct(mid, mid, block.kernel, block.stride, groups=mid, bn=bn), *attention(block),
            ConvBNAct(mid, cout, 1, act=False, bn=bn)]


class MBConv(nn.Module):
    """Inverted residual (MBConv or Fused-MBConv, ``block_layers``) with a residual where shapes match. Shape from
    ``Block``."""

    def __init__(self, block: Block, drop_path: float, bn: tuple[float, float]) -> None:
        super().__init__()
        self.block = nn.Sequential(*block_layers(block, bn))
        self.residual = block.residual
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if not self.residual:
            return out
        if self.training and self.drop_path > 0:
            # Stochastic depth: drop the whole branch per sample, rescale the survivors.
            keep = 1.0 - self.drop_path
            mask = torch.empty(out.shape[0], 1, 1, 1, dtype=out.dtype, device=out.device).bernoulli_(keep)
            out = out * mask / keep
        return out + x


class EfficientNet(nn.Module):
    """The network for one spec: ``features`` (stem, the stages, head conv), pooling, classifier."""

    def __init__(self, spec: ScalingSpec) -> None:
        super().__init__()
        self.spec = spec
        bn = spec.batchnorm
        layers: list[nn.Module] = [ConvBNAct(3, spec.stem_channels, 3, spec.stem_stride, bn=bn)]
        total = sum(s.repeats for s in spec.stages)
        index = 0
        for st in spec.stages:
            blocks = []
            for block in st.blocks:
                # Linear stochastic-depth schedule over all blocks: 0 for the first, up to 0.2.
                blocks.append(MBConv(block, STOCHASTIC_DEPTH * index / total, bn))
                index += 1
            layers.append(nn.Sequential(*blocks))
        layers.append(ConvBNAct(spec.stages[-1].out_channels, spec.head_channels, 1, bn=bn))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(spec.drop_rate), nn.Linear(spec.head_channels, spec.num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.out_features**0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(x)


def build_model(spec: Any, device: torch.device | str | None = None) -> nn.Module:
    """A freshly initialised model for ``spec`` (an EfficientNet, or a baseline: ``effnet.arch.baselines``); ``ValueError``
    first if the card says an EfficientNet is too large.

    With ``device=None`` the current default device applies (``with torch.device("meta")`` works).
    """
    if isinstance(spec, BaselineSpec):
        make = lambda: build_baseline(spec)  # noqa: E731
    else:
        model_card(spec)  # the size guard: refuses before a single tensor is allocated
        make = lambda: EfficientNet(spec)  # noqa: E731
    if device is None:
        return make()
    with torch.device(device):
        return make()


# torchvision's weight files are named <model>-<first hex digits of their sha256>.pth.
WEIGHTS_HASH = re.compile(r"-([a-f0-9]{6,})\.pth$")


def torchvision_name(spec: Any) -> str:
    """torchvision's name of the model ``spec`` describes (``efficientnet_b3``, ``resnet18``)."""
    if isinstance(spec, BaselineSpec):
        return spec.model
    if spec.variant is None:
        raise ValueError("variant: ImageNet weights exist only for the official variants (b0-b7, v2-s/m/l) and the "
                         "baselines")
    if not spec.paper_block:
        raise ValueError(f"attention: ImageNet weights exist only for {spec.variant.upper()}'s own blocks "
                         f"({spec.name} changes them); train it from scratch or from a finished run")
    return f"efficientnet_{spec.variant.replace('-', '_')}"


def head_prefix(spec: Any) -> str:
    """The state-dict prefix of the classifier: new (not copied) when a model is fine-tuned on other classes."""
    return f"{spec.head}." if isinstance(spec, BaselineSpec) else "classifier."


def imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights for ``arch`` (torchvision's model name): downloaded once (sha256 checked)
    into torch's cache.

    The file is loaded with ``weights_only=True``: a poisoned file in the cache cannot run code.
    ``RuntimeError`` saying where to put the file when it cannot be had (offline).
    """
    import torchvision.models as tvm

    url = tvm.get_model_weights(arch).IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written to a temporary file and moved into place only when the hash matches.
            torch.hub.download_url_to_file(url, str(path), hash_prefix=WEIGHTS_HASH.search(path.name).group(1),
                                           progress=False)
        except Exception as exc:  # urllib/ssl/hash errors all mean: no usable weights here
            raise RuntimeError(
                f"Could not get torchvision's ImageNet weights for {arch} ({exc.__class__.__name__}: "
                f"{exc}). They download from {url}; without internet, copy that file to {path}."
            ) from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{path} is not a usable weights file ({exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0]}); delete it and it downloads again") from exc
    if not isinstance(state, dict):
        raise RuntimeError(f"{path} does not hold a state dict; delete it and it downloads again")
    return state


def load_pretrained(spec: Any, device: torch.device | str | None = None) -> nn.Module:
    """``spec``'s model with torchvision's ImageNet weights (see ``imagenet_state_dict``).

    Needs an official variant, or a baseline in the imagenet geometry. With ``num_classes != 1000`` the
    classifier stays freshly initialised (fine-tuning); everything else is loaded strictly.
    """
    if isinstance(spec, BaselineSpec) and not spec.has_imagenet_weights:
        raise ValueError(f"geometry: ImageNet weights fit {spec.name} only in the imagenet geometry")
    if spec.normalization != "imagenet":
        raise ValueError("normalization: ImageNet weights expect normalization='imagenet' in the spec")
    state = imagenet_state_dict(torchvision_name(spec))
    model = build_model(spec, device)
    head = head_prefix(spec)
    try:
        if spec.num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith(head)}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or not missing or any(not k.startswith(head) for k in missing):
                raise RuntimeError(f"missing {missing}, unexpected {unexpected}")
        else:
            model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RuntimeError(f"ImageNet weights do not fit {spec.name}: {str(exc).splitlines()[0]}") from exc
    return model
