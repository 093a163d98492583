"""Compound scaling as pure arithmetic: the paper's table, the scaling rules, the validated spec.

No torch here on purpose: the app's explorer recomputes all of this on every slider move,
and importing torch would cost seconds. Everything the model and the model card need about
*shape* (channels, repeats, strides, resolution) is decided in this module and nowhere else.

Rounding rules (the paper's reference code, also torchvision's):
- channels: ``round_channels`` rounds ``c * width_mult`` to the nearest multiple of 8,
  never below 8 and never more than 10% below the exact value;
- repeats: ``ceil(repeats * depth_mult)`` (at least 1 for every stage);
- resolution: ``round(base_resolution * resolution_mult)`` to the nearest pixel;
- head width: 4 x the scaled last-stage width (torchvision's rule, 1280 for B0). The paper's
  reference code rounds ``1280 * width_mult`` instead; both agree for B0-B7 and differ only
  for custom widths, where we keep the 4x rule so that one rule covers every spec.
  EfficientNetV2's released models are not scaled from B0: their stage tables and 1280-wide
  head are torchvision's, as written in ``V2``.

The block is data too: each stage is MBConv or Fused-MBConv (EfficientNetV2: the expand 1x1 and
depthwise kxk fused into one kxk conv, faster on accelerators), with an attention module after
the depthwise conv (``ATTENTIONS``: the paper's squeeze-and-excitation, ECA, CBAM, or none).
Defaults are the paper's, so a spec written before these fields existed means what it meant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

GEOMETRIES: tuple[str, ...] = ("imagenet", "cifar")
SCALINGS: tuple[str, ...] = ("compound", "depth", "width", "resolution")
NORMALIZATIONS: tuple[str, ...] = ("cifar100", "imagenet")

# The paper's grid-search result at phi=1 (alpha * beta^2 * gamma^2 ~ 2).
PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA = 1.2, 1.1, 1.15
# The constraint's target (FLOPs double per unit of phi) and how far from it a spec may stray before
# the lab warns that FLOPs no longer grow by about 2x per step of phi.
CONSTRAINT_TARGET, CONSTRAINT_TOLERANCE = 2.0, 0.2
# What the lab accepts for alpha, beta, gamma: the paper's alpha, beta, gamma >= 1 (below 1 a dimension would shrink
# as phi grows), and at most 3 (alpha * beta^2 * gamma^2 = 2 keeps all three far below).
COEFFICIENT_RANGE = (1.0, 3.0)

PHI_RANGE = (-4.0, 10.0)
MIN_RESOLUTION = 16
# More classes than ImageNet-21k's 21,843 is no dataset the lab can hold; a bound also stops a 3 KB bundle that
# declares a 360,000-class B7 from making the server build a 4.4 GB model before anything else is checked.
MAX_CLASSES = 25_000

DEFAULT_BASE_RESOLUTION = {"imagenet": 224, "cifar": 32}
DEFAULT_OUTPUT_STRIDE = {"imagenet": 32, "cifar": 8}
OUTPUT_STRIDES = (8, 16, 32)
HEAD_EXPANSION = 4
CHANNEL_DIVISOR = 8
SE_RATIO = 0.25
STOCHASTIC_DEPTH = 0.2
# Attention after the depthwise conv of an MBConv block, by what the code says; the values are what people read.
# SE (Hu et al.): pool, 1x1 bottleneck of se_ratio x the block's input channels, 1x1 back, sigmoid gate.
# ECA (Wang et al., CVPR 2020): pool, a 1-D conv of eca_kernel(C) across channels, sigmoid gate; no bottleneck.
# CBAM (Woo et al., ECCV 2018): SE's bottleneck shared by average- and max-pooled features, then a 7x7 conv over
# the channel-wise average and max as a spatial gate. Fused-MBConv blocks carry none, as in EfficientNetV2.
ATTENTIONS = {"se": "SE", "eca": "ECA", "cbam": "CBAM", "none": "no attention"}
CBAM_SPATIAL_KERNEL = 7


@dataclass(frozen=True)
class Stage:
    """One stage: expansion, kernel, stride, channels, repeats, and its block (MBConv or fused, attention).

    ``B0_STAGES`` holds the paper's Table 1, ``V2`` torchvision's EfficientNetV2 tables; ``ScalingSpec.stages``
    the scaled ones the model builds and the card counts.
    """

    expand: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int
    fused: bool = False
    attention: str = "se"  # a key of ATTENTIONS; always "none" in a fused stage
    se_ratio: float = SE_RATIO

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The stage's blocks: the first changes channels and stride, the repeats keep both."""
        kind = dict(fused=self.fused, attention=self.attention, se_ratio=self.se_ratio)
        first = Block.of(self.in_channels, self.out_channels, self.expand, self.kernel, self.stride, **kind)
        rest = Block.of(self.out_channels, self.out_channels, self.expand, self.kernel, 1, **kind)
        return (first,) + (rest,) * (self.repeats - 1)

    @property
    def operator(self) -> str:
        """``MBConv6`` (the paper's block, SE 0.25), ``MBConv6 + ECA``, ``Fused-MBConv4``: what the card's rows say."""
        if self.fused:
            return f"Fused-MBConv{self.expand}"
        if self.attention == "none":
            return f"MBConv{self.expand}, no attention"
        ratio = "" if self.attention == "eca" or self.se_ratio == SE_RATIO else f" {self.se_ratio:g}"
        extra = "" if self.attention == "se" and not ratio else f" + {ATTENTIONS[self.attention]}{ratio}"
        return f"MBConv{self.expand}{extra}"


@dataclass(frozen=True)
class Block:
    """One block's shape. MBConv: expand 1x1 -> depthwise kxk -> attention -> project 1x1. Fused-MBConv:
    expand kxk -> project 1x1 (one kxk conv when there is no expansion).

    The model builds exactly these and the card counts exactly these, so the two cannot disagree.
    """

    in_channels: int
    out_channels: int
    expanded: int  # channels after expansion (= in_channels when there is no expansion)
    squeeze: int  # SE's (and CBAM's) bottleneck width
    kernel: int
    stride: int
    fused: bool = False
    attention: str = "se"

    @classmethod
    def of(cls, cin: int, cout: int, expand: int, kernel: int, stride: int, fused: bool = False,
           attention: str = "se", se_ratio: float = SE_RATIO) -> Block:
        return cls(cin, cout, round_channels(cin * expand), squeeze_channels(cin, se_ratio), kernel, stride, fused,
                   "none" if fused else attention)

    @property
    def has_expansion(self) -> bool:
        """Expansion ratio 1 has no expand conv: MBConv1's depthwise conv works on the input, Fused-MBConv1 is one
        kxk conv from input to output channels."""
        return self.expanded != self.in_channels

    @property
    def eca_kernel(self) -> int:
        """ECA's 1-D kernel across the ``expanded`` channels it gates: the paper's rule with gamma=2, b=1,
        t = int((log2(C) + 1) / 2), made odd (C=96: 3; C=1152: 5)."""
        t = int((math.log2(self.expanded) + 1) / 2)
        return t if t % 2 else t + 1

    @property
    def residual(self) -> bool:
        """A skip connection exists only where input and output shapes match."""
        return self.stride == 1 and self.in_channels == self.out_channels


STEM_CHANNELS = 32
B0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 32, 16, 1),
    Stage(6, 3, 2, 16, 24, 2),
    Stage(6, 5, 2, 24, 40, 2),
    Stage(6, 3, 2, 40, 80, 3),
    Stage(6, 5, 1, 80, 112, 3),
    Stage(6, 5, 2, 112, 192, 4),
    Stage(6, 3, 1, 192, 320, 1),
)


@dataclass(frozen=True)
class OfficialVariant:
    """A released model: the multipliers Google published, which are not exactly alpha^phi."""

    width: float
    depth: float
    resolution: int
    dropout: float
    imagenet_top1: float  # the paper's Table 2, for reference only


OFFICIAL: dict[str, OfficialVariant] = {
    "b0": OfficialVariant(1.0, 1.0, 224, 0.2, 77.1),
    "b1": OfficialVariant(1.0, 1.1, 240, 0.2, 79.1),
    "b2": OfficialVariant(1.1, 1.2, 260, 0.3, 80.1),
    "b3": OfficialVariant(1.2, 1.4, 300, 0.3, 81.6),
    "b4": OfficialVariant(1.4, 1.8, 380, 0.4, 82.9),
    "b5": OfficialVariant(1.6, 2.2, 456, 0.4, 83.6),
    "b6": OfficialVariant(1.8, 2.6, 528, 0.5, 84.0),
    "b7": OfficialVariant(2.0, 3.1, 600, 0.5, 84.3),
}


@dataclass(frozen=True)
class V2Variant:
    """An EfficientNetV2 (Tan & Le, 2021) as torchvision builds it: its own stage table (Fused-MBConv in the first
    stages, no attention there), a 1280-wide head, BatchNorm eps 1e-3. Not compound-scaled from B0: S, M and L
    were sized by hand, so these are tables, not multipliers."""

    stages: tuple[Stage, ...]
    resolution: int  # torchvision's evaluation size
    dropout: float
    imagenet_top1: float  # torchvision's weights metadata, for reference only
    head_channels: int = 1280


def _v2(*rows: tuple[int, int, int, int, int, int], fused: int) -> tuple[Stage, ...]:
    return tuple(Stage(*row, fused=i < fused, attention="none" if i < fused else "se") for i, row in enumerate(rows))


V2: dict[str, V2Variant] = {
    "v2-s": V2Variant(_v2((1, 3, 1, 24, 24, 2), (4, 3, 2, 24, 48, 4), (4, 3, 2, 48, 64, 4), (4, 3, 2, 64, 128, 6),
                          (6, 3, 1, 128, 160, 9), (6, 3, 2, 160, 256, 15), fused=3), 384, 0.2, 84.228),
    "v2-m": V2Variant(_v2((1, 3, 1, 24, 24, 3), (4, 3, 2, 24, 48, 5), (4, 3, 2, 48, 80, 5), (4, 3, 2, 80, 160, 7),
                          (6, 3, 1, 160, 176, 14), (6, 3, 2, 176, 304, 18), (6, 3, 1, 304, 512, 5), fused=3),
                      480, 0.3, 85.112),
    "v2-l": V2Variant(_v2((1, 3, 1, 32, 32, 4), (4, 3, 2, 32, 64, 7), (4, 3, 2, 64, 96, 7), (4, 3, 2, 96, 192, 10),
                          (6, 3, 1, 192, 224, 19), (6, 3, 2, 224, 384, 25), (6, 3, 1, 384, 640, 7), fused=3),
                      480, 0.4, 85.808),
}
# Every released model's name, B0-B7 (the compound-scaling line) then V2: what --variant and the pages offer.
VARIANTS: tuple[str, ...] = (*OFFICIAL, *V2)


def round_channels(channels: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Nearest multiple of ``divisor``, at least ``divisor``, never more than 10% below ``channels``."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def round_repeats(repeats: int, depth_mult: float) -> int:
    """``ceil(repeats * depth_mult)``; the tiny epsilon keeps 3 * 1.2**1 from becoming 4 by float error."""
    return max(1, math.ceil(repeats * depth_mult - 1e-9))


def squeeze_channels(block_in_channels: int, ratio: float = SE_RATIO) -> int:
    """Squeeze-and-excitation width: ``ratio`` (the paper's 0.25) of the block's *input* channels (not the expanded
    ones)."""
    return max(1, int(block_in_channels * ratio))


def round_resolution(base: int, resolution_mult: float) -> int:
    """Nearest pixel."""
    return round(base * resolution_mult)


def single_dimension_mults(method: str, flops_ratio: float) -> tuple[float, float, float]:
    """(depth, width, resolution) multipliers that scale only one dimension by ``flops_ratio``.

    FLOPs grow linearly with depth and quadratically with width and resolution, so
    depth-only needs d = R, width-only w = sqrt(R), resolution-only r = sqrt(R).
    """
    if method == "depth":
        return flops_ratio, 1.0, 1.0
    if method == "width":
        return 1.0, math.sqrt(flops_ratio), 1.0
    if method == "resolution":
        return 1.0, 1.0, math.sqrt(flops_ratio)
    raise ValueError(f"scaling: {method!r} is not a single-dimension method (depth, width, resolution)")


def stage_strides(output_stride: int, table: tuple[Stage, ...] = B0_STAGES) -> tuple[int, tuple[int, ...]]:
    """Stem stride and per-stage strides of ``table`` (B0's, or a V2's) for a total stride of ``output_stride``.

    The paper downsamples 5 times (stem, stages 2, 3, 4, 6) for a total of 32, as V2 does. A smaller output
    stride removes the *earliest* downsamplings, the usual CIFAR adaptation: at 32 px input,
    output stride 8 keeps 4x4 final maps where the paper's geometry would end at 1x1.
    """
    removed = 5 - int(math.log2(output_stride))
    strides = [2] + [s.stride for s in table]
    for i, s in enumerate(strides):
        if removed and s == 2:
            strides[i] = 1
            removed -= 1
    return strides[0], tuple(strides[1:])


@dataclass(frozen=True)
class ScalingSpec:
    """A validated description of one EfficientNet: everything needed to build, train and use it.

    A custom spec scales B0 by ``depth = alpha**phi``, ``width = beta**phi`` and
    ``resolution = gamma**phi`` (compound), or by one dimension alone at the FLOPs budget
    ``2**phi`` (``scaling="depth"|"width"|"resolution"``). An official spec
    (``ScalingSpec.official("b3")``) uses the released multipliers instead; ``formula_*``
    always gives what the formula would say, so the difference stays visible.
    """

    phi: float = 0.0
    alpha: float = PAPER_ALPHA
    beta: float = PAPER_BETA
    gamma: float = PAPER_GAMMA
    geometry: str = "cifar"
    num_classes: int = 100
    base_resolution: int | None = None
    output_stride: int | None = None
    dropout: float | None = None
    scaling: str = "compound"
    variant: str | None = None
    normalization: str = "cifar100"
    budget: float | None = None  # single-dimension specs: the FLOPs ratio to reach (default 2^phi)
    # The block (defaults: the paper's). attention: one key of ATTENTIONS for every MBConv stage, or one per stage
    # joined by commas ("se,se,eca,..."); fused_stages: the first N stages Fused-MBConv (None: the table's own,
    # none for B0-B7, three for V2).
    attention: str = "se"
    se_ratio: float = SE_RATIO
    fused_stages: int | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def official(cls, name: str, geometry: str = "cifar", num_classes: int = 100, **overrides: object) -> ScalingSpec:
        """The released variant ``name`` (b0..b7, v2-s, v2-m, v2-l).

        In the ``cifar`` geometry the width and depth stay the released ones and the resolution is
        32 px scaled by the released resolution ratio (B3: 32 * 300/224 -> 43; V2-S: 32 * 384/224 -> 55).
        ``.with_scaling("width")`` turns a B-variant into the width-only model at its budget. A V2 has phi 0:
        it is not on B0's compound-scaling line.
        """
        key = str(name).lower()
        if key not in VARIANTS:
            raise ValueError(f"variant: {name!r} is not one of {', '.join(VARIANTS)}")
        phi = float(key[1:]) if key in OFFICIAL else 0.0
        return cls(phi=phi, geometry=geometry, num_classes=num_classes, variant=key, **overrides)

    def __post_init__(self) -> None:
        _validate(self)
        # One spelling per model, so equal models are equal specs (and share a cached card) and a name never claims
        # what the model lacks: a per-stage list whose MBConv stages share one kind is that kind (the fused ones carry
        # none anyway), a model with no MBConv stage left has the default attention, a ratio that no SE or CBAM
        # reads is the default, and the table's own fused-stage count is the default.
        fused = self._table_fused if self.fused_stages is None else self.fused_stages
        kinds = self.attention.split(",")
        mbconv = set(kinds[fused:] if len(kinds) > 1 else kinds) if fused < len(self._table) else {"se"}
        if len(mbconv) == 1:
            object.__setattr__(self, "attention", mbconv.pop())
        if not {"se", "cbam"} & set(self.attention.split(",")) or fused == len(self._table):
            object.__setattr__(self, "se_ratio", SE_RATIO)
        if self.fused_stages == self._table_fused:
            object.__setattr__(self, "fused_stages", None)

    def replace(self, **changes: object) -> ScalingSpec:
        """A copy with some fields changed, validated again."""
        return replace(self, **changes)

    @property
    def baseline(self) -> ScalingSpec:
        """The phi=0 model (B0's shape) in the same geometry, resolution base and class count, with this spec's block
        (B3 · ECA's is phi=0 · ECA). A V2 has no phi=0 model: its reference is B0 as released."""
        if self.is_v2:
            return replace(self, phi=0.0, variant=None, scaling="compound", dropout=None, attention="se",
                           se_ratio=SE_RATIO, fused_stages=None)
        return replace(self, phi=0.0, variant=None, scaling="compound", dropout=None)

    def with_scaling(self, method: str) -> ScalingSpec:
        """This spec's FLOPs budget reached by ``method`` (compound, or one dimension alone at 2^phi).

        An official variant becomes a custom spec at its phi (B3 -> phi 3): it is no longer the released model.
        A V2 has no phi: ``ValueError``.
        """
        if method == "compound":
            return self
        if self.is_v2:
            raise ValueError(f"scaling: {self.name} is not on B0's scaling line (its table was sized by hand), so it "
                             "has no depth-, width- or resolution-only version; use compound, or a B-variant")
        return replace(self, variant=None, scaling=method)

    # ------------------------------------------------------------------ formula values
    @property
    def constraint(self) -> float:
        """alpha * beta^2 * gamma^2: the FLOPs growth per unit of phi (the paper picks ~2)."""
        return self.alpha * self.beta**2 * self.gamma**2

    @property
    def formula_depth_mult(self) -> float:
        return self.alpha**self.phi

    @property
    def formula_width_mult(self) -> float:
        return self.beta**self.phi

    @property
    def formula_resolution_mult(self) -> float:
        return self.gamma**self.phi

    @property
    def formula_resolution(self) -> int:
        return round_resolution(self.base, self.formula_resolution_mult)

    @property
    def flops_target(self) -> float:
        """The FLOPs budget relative to B0 that a single-dimension spec is scaled to: ``budget``, else 2^phi."""
        return self.budget if self.budget is not None else 2.0**self.phi

    # ------------------------------------------------------------------ what gets built
    @property
    def is_official(self) -> bool:
        return self.variant is not None

    @property
    def constraint_off(self) -> bool:
        """Whether alpha * beta^2 * gamma^2 strays from 2 by more than the lab's tolerance."""
        return abs(self.constraint - CONSTRAINT_TARGET) > CONSTRAINT_TOLERANCE

    @property
    def is_v2(self) -> bool:
        return self.variant in V2

    @property
    def paper_block(self) -> bool:
        """Whether the blocks are the released model's own (SE 0.25; V2's fused stages): only then do ImageNet
        weights fit."""
        return self.attention == "se" and self.se_ratio == SE_RATIO and self.fused_stages in (None, self._table_fused)

    @property
    def _table(self) -> tuple[Stage, ...]:
        return V2[self.variant].stages if self.is_v2 else B0_STAGES

    @property
    def _table_fused(self) -> int:
        return sum(s.fused for s in self._table)

    def stage_attention(self, index: int) -> str:
        """The attention of MBConv stage ``index`` (0-based): the one value, or that stage's of the per-stage list."""
        kinds = self.attention.split(",")
        return kinds[index] if len(kinds) > 1 else kinds[0]

    @property
    def _mults(self) -> tuple[float, float, float]:
        if self.is_v2:
            return 1.0, 1.0, V2[self.variant].resolution / 224
        if self.variant is not None:
            v = OFFICIAL[self.variant]
            return v.depth, v.width, v.resolution / 224
        if self.scaling == "compound":
            return self.formula_depth_mult, self.formula_width_mult, self.formula_resolution_mult
        return single_dimension_mults(self.scaling, self.flops_target)

    @property
    def depth_mult(self) -> float:
        return self._mults[0]

    @property
    def width_mult(self) -> float:
        return self._mults[1]

    @property
    def resolution_mult(self) -> float:
        return self._mults[2]

    @property
    def base(self) -> int:
        """Resolution at phi=0: 224 in the imagenet geometry, 32 in the cifar one, unless set."""
        return self.base_resolution or DEFAULT_BASE_RESOLUTION[self.geometry]

    @property
    def resolution(self) -> int:
        """Input side in pixels (official imagenet specs: exactly the paper's table)."""
        return round_resolution(self.base, self.resolution_mult)

    @property
    def predicted_flops_ratio(self) -> float:
        """d * w^2 * r^2 against phi=0 (unrounded multipliers): what the formula promises."""
        return self.depth_mult * self.width_mult**2 * self.resolution_mult**2

    @property
    def stride(self) -> int:
        return self.output_stride or DEFAULT_OUTPUT_STRIDE[self.geometry]

    @property
    def drop_rate(self) -> float:
        """Classifier dropout: the table's for official variants, else given, else 0.2 (B0's)."""
        if self.dropout is not None:
            return self.dropout
        if self.is_v2:
            return V2[self.variant].dropout
        if self.variant is not None:
            return OFFICIAL[self.variant].dropout
        return 0.2

    @property
    def batchnorm(self) -> tuple[float, float]:
        """(eps, momentum). torchvision's B5-B7 use (1e-3, 0.01), its V2 (1e-3, 0.1); everything else (1e-5, 0.1)."""
        if self.variant in ("b5", "b6", "b7"):
            return 1e-3, 0.01
        if self.is_v2:
            return 1e-3, 0.1
        return 1e-5, 0.1

    @property
    def stem_channels(self) -> int:
        """32 x width for B0's line; a V2's first stage input (24 or 32: its table)."""
        if self.is_v2:
            return self._table[0].in_channels
        return round_channels(STEM_CHANNELS * self.width_mult)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The scaled stages (seven for B0's line) with this geometry's strides and this spec's blocks."""
        table = self._table
        _, strides = stage_strides(self.stride, table)
        w, d = self.width_mult, self.depth_mult
        fused = self._table_fused if self.fused_stages is None else self.fused_stages
        return tuple(
            Stage(
                s.expand,
                s.kernel,
                stride,
                round_channels(s.in_channels * w),
                round_channels(s.out_channels * w),
                round_repeats(s.repeats, d),
                fused=i < fused,
                attention="none" if i < fused else self.stage_attention(i),
                se_ratio=self.se_ratio,
            )
            for i, (s, stride) in enumerate(zip(table, strides, strict=True))
        )

    @property
    def stem_stride(self) -> int:
        return stage_strides(self.stride, self._table)[0]

    @property
    def head_channels(self) -> int:
        if self.is_v2:
            return V2[self.variant].head_channels
        return HEAD_EXPANSION * self.stages[-1].out_channels

    @property
    def name(self) -> str:
        """A short label with the paper's letters: ``B3``, ``φ=1.5`` (paper coefficients), ``φ=1.5 (α=1.3, β=1.1, γ=1.1)``,
        ``depth-only φ=2``, ``V2-S``; then what differs from the paper's block: ``B0 · ECA``."""
        return " · ".join([self._shape_name, *self.block_names])

    @property
    def _shape_name(self) -> str:
        if self.variant is not None:
            return self.variant.upper()
        if self.scaling != "compound":
            return f"{self.scaling}-only φ={self.phi:g}"
        if (self.alpha, self.beta, self.gamma) == (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA):
            return f"φ={self.phi:g}"
        return f"φ={self.phi:g} (α={self.alpha:g}, β={self.beta:g}, γ={self.gamma:g})"

    @property
    def block_names(self) -> list[str]:
        """What differs from the paper's block, as labels read it: ``["ECA"]``, ``["SE 0.5", "3 fused"]``; [] for
        the paper's own (so B0 stays ``B0`` and a B0 with ECA is ``B0 · ECA``)."""
        names = []
        kinds = self.attention.split(",")
        ratio = "" if self.se_ratio == SE_RATIO else f" {self.se_ratio:g}"
        if len(kinds) > 1:
            names.append("attention " + "/".join(ATTENTIONS[k] if k != "none" else "-" for k in kinds))
            if ratio and ({"se", "cbam"} & set(kinds)):
                names.append(f"ratio{ratio}")
        elif kinds[0] in ("se", "cbam"):
            if kinds[0] == "cbam" or ratio:
                names.append(ATTENTIONS[kinds[0]] + ratio)
        else:
            names.append(ATTENTIONS[kinds[0]])
        if self.fused_stages not in (None, self._table_fused):
            names.append(f"{self.fused_stages} fused")
        return names

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able fields; ``ScalingSpec.from_dict`` rebuilds the same spec."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ScalingSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"spec: unknown fields {sorted(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


def _finite_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return float(value)


def _whole_number(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected a whole number, got {value!r}")
    return value


def _validate(spec: ScalingSpec) -> None:
    """Raise ``ValueError`` naming the offending field.

    Whether the model is small enough to build is the model card's question (``effnet.arch.card``):
    it needs the per-layer counts, and this module stays below the card.
    """
    low, high = COEFFICIENT_RANGE
    for name in ("alpha", "beta", "gamma"):
        if not low <= _finite_number(name, getattr(spec, name)) <= high:
            raise ValueError(f"{name}: must be in [{low:g}, {high:g}] (the paper's α, β, γ ≥ 1: below 1 a dimension "
                             f"would shrink as φ grows), got {getattr(spec, name)!r}")
    phi = _finite_number("phi", spec.phi)
    if not PHI_RANGE[0] <= phi <= PHI_RANGE[1]:
        raise ValueError(f"phi: must be within [{PHI_RANGE[0]:g}, {PHI_RANGE[1]:g}], got {phi:g}")
    if spec.geometry not in GEOMETRIES:
        raise ValueError(f"geometry: {spec.geometry!r} is not one of {', '.join(GEOMETRIES)}")
    if spec.scaling not in SCALINGS:
        raise ValueError(f"scaling: {spec.scaling!r} is not one of {', '.join(SCALINGS)}")
    if spec.normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: {spec.normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
    if spec.variant is not None:
        if spec.variant not in VARIANTS:
            raise ValueError(f"variant: {spec.variant!r} is not one of {', '.join(VARIANTS)}")
        if spec.scaling != "compound":
            raise ValueError("scaling: an official variant is compound-scaled; use .with_scaling(method) for one dimension")
    if not 1 <= _whole_number("num_classes", spec.num_classes) <= MAX_CLASSES:
        raise ValueError(f"num_classes: must be 1 to {MAX_CLASSES:,}, got {spec.num_classes}")
    if spec.base_resolution is not None and _whole_number("base_resolution", spec.base_resolution) < MIN_RESOLUTION:
        raise ValueError(f"base_resolution: must be at least {MIN_RESOLUTION} px, got {spec.base_resolution}")
    if spec.budget is not None and _finite_number("budget", spec.budget) <= 0:
        raise ValueError(f"budget: must be positive, got {spec.budget!r}")
    if spec.output_stride is not None and spec.output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride: must be one of {OUTPUT_STRIDES}, got {spec.output_stride!r}")
    if spec.dropout is not None and not 0 <= _finite_number("dropout", spec.dropout) < 1:
        raise ValueError(f"dropout: must be in [0, 1), got {spec.dropout!r}")
    _validate_block(spec)
    if spec.resolution < MIN_RESOLUTION:
        raise ValueError(
            f"resolution: {spec.base} px x {spec.resolution_mult:.3g} = {spec.resolution} px is below "
            f"the minimum of {MIN_RESOLUTION} px (raise phi, gamma or base_resolution)"
        )


def _validate_block(spec: ScalingSpec) -> None:
    """The block fields: a known attention (one, or one per stage), a ratio in (0, 1], a fused-stage count that fits."""
    n = len(spec._table)
    if not isinstance(spec.attention, str):
        raise ValueError(f"attention: expected one of {', '.join(ATTENTIONS)} (or one per stage), got {spec.attention!r}")
    kinds = spec.attention.split(",")
    bad = [k for k in kinds if k not in ATTENTIONS]
    if bad:
        raise ValueError(f"attention: {bad[0]!r} is not one of {', '.join(ATTENTIONS)}")
    if len(kinds) not in (1, n):
        raise ValueError(f"attention: give one kind, or one per stage ({n} here, joined by commas); got {len(kinds)}")
    if not 0 < _finite_number("se_ratio", spec.se_ratio) <= 1:
        raise ValueError(f"se_ratio: must be in (0, 1] (the paper's 0.25), got {spec.se_ratio!r}")
    if spec.fused_stages is not None and not 0 <= _whole_number("fused_stages", spec.fused_stages) <= n:
        raise ValueError(f"fused_stages: must be 0 to {n} (the first N stages Fused-MBConv), got {spec.fused_stages}")
    fused = spec._table_fused if spec.fused_stages is None else spec.fused_stages
    if len(kinds) == n and any(k != "none" for k in kinds[:fused]):
        raise ValueError(f"attention: the first {fused} stages are Fused-MBConv, which carries no attention (as in "
                         "EfficientNetV2); give 'none' for them")
