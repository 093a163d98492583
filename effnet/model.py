"""EfficientNet built from a ``ScalingSpec``: stem, seven MBConv stages, head.

Module names mirror torchvision's (``features.0`` stem, ``features.1``-``features.7`` stages,
``features.8`` head conv, ``classifier.1`` the linear layer), so torchvision's ImageNet
weights load with ``strict=True`` and the paper's stem/stages/head structure stays visible.
All shapes come from the spec; this file only turns them into modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from effnet.scaling import STOCHASTIC_DEPTH, ScalingSpec, round_channels, squeeze_channels


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


class MBConv(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise kxk -> SE -> project 1x1 (+ residual)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int,
                 drop_path: float, bn: tuple[float, float]) -> None:
        super().__init__()
        mid = round_channels(cin * expand)
        layers: list[nn.Module] = []
        if mid != cin:
            layers.append(ConvBNAct(cin, mid, 1, bn=bn))
        layers += [
            ConvBNAct(mid, mid, kernel, stride, groups=mid, bn=bn),
            SqueezeExcite(mid, squeeze_channels(cin)),
            ConvBNAct(mid, cout, 1, act=False, bn=bn),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
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
    """The network for one spec. ``features`` ends at the last feature map (used by CAMs)."""

    def __init__(self, spec: ScalingSpec) -> None:
        super().__init__()
        self.spec = spec
        bn = spec.batchnorm
        layers: list[nn.Module] = [ConvBNAct(3, spec.stem_channels, 3, spec.stem_stride, bn=bn)]
        total = sum(s.repeats for s in spec.stages)
        index = 0
        for st in spec.stages:
            blocks = []
            for r in range(st.repeats):
                # Linear stochastic-depth schedule over all blocks: 0 for the first, up to 0.2.
                drop = STOCHASTIC_DEPTH * index / total
                blocks.append(MBConv(st.in_channels if r == 0 else st.out_channels, st.out_channels,
                                     st.expand, st.kernel, st.stride if r == 0 else 1, drop, bn))
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

    @property
    def target_layer(self) -> nn.Module:
        """The last feature map (head conv): the layer class activation maps explain."""
        return self.features[-1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(x)


def build_model(spec: ScalingSpec, device: torch.device | str | None = None) -> EfficientNet:
    """A freshly initialised model for ``spec`` (already validated: its size is within bounds).

    With ``device=None`` the current default device applies (``with torch.device("meta")`` works).
    """
    if device is None:
        return EfficientNet(spec)
    with torch.device(device):
        return EfficientNet(spec)


def load_pretrained(spec: ScalingSpec, device: torch.device | str | None = None) -> EfficientNet:
    """``spec``'s model with torchvision's ImageNet weights (downloaded once into torch's cache).

    Needs an official variant. With ``num_classes != 1000`` the classifier stays freshly
    initialised (fine-tuning); everything else is loaded strictly. Offline this raises
    ``RuntimeError`` saying where to put the weights file.
    """
    if spec.variant is None:
        raise ValueError("variant: ImageNet weights exist only for the official variants b0-b7")
    if spec.normalization != "imagenet":
        raise ValueError("normalization: ImageNet weights expect normalization='imagenet' in the spec")
    import torchvision.models as tvm

    weights = tvm.get_model_weights(f"efficientnet_{spec.variant}").IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # urllib/ssl/hash errors all mean: no usable weights here
        cache = torch.hub.get_dir() + "/checkpoints/" + weights.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"Could not get torchvision's ImageNet weights for {spec.variant.upper()} ({exc.__class__.__name__}: "
            f"{exc}). They download from {weights.url}; without internet, copy that file to {cache}."
        ) from exc
    model = build_model(spec, device)
    if spec.num_classes != 1000:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"classifier.1.weight", "classifier.1.bias"}:
            raise RuntimeError(f"ImageNet weights do not fit {spec.name}: missing {missing}, unexpected {unexpected}")
    else:
        model.load_state_dict(state, strict=True)
    return model

