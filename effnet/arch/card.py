"""The model card: per-stage shapes, parameters and multiply-adds, computed analytically.

Nothing is built or traced: the card walks the spec's stages with the same rules the model
uses (``effnet.arch.scaling``) and counts what each layer holds and computes. Tests check it
against ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per multiply-add;
the paper's "FLOPs" are multiply-adds) and ``sum(p.numel())`` of the built model.

What is counted as MACs: convolutions and the classifier (the layers FlopCounterMode counts),
including the attention modules' (SE's and CBAM's 1x1 convs, ECA's 1-D conv, CBAM's 7x7 spatial
conv). BatchNorm, activations, pooling and the gates' multiplies are elementwise and not counted,
as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from effnet.arch.scaling import ATTENTIONS, CBAM_SPATIAL_KERNEL, OFFICIAL, SCALINGS, Block, ScalingSpec

BYTES_FP32 = 4
# Weights, their gradients and SGD's momentum buffer: three fp32 copies while training.
TRAINING_PARAM_COPIES = 3
# A spec past either limit has no card, and so is never built: 1 G parameters is 4 GB of fp32 weights
# (12 GB with gradients and SGD momentum), and 16 GiB of activations for one training image
# (these machines have 24 GiB). Both are known from arithmetic, before anything is allocated.
MAX_PARAMS = 1_000_000_000
MAX_ACTIVATION_BYTES_PER_IMAGE = 16 * 1024**3


@dataclass(frozen=True)
class StageRow:
    """One line of the card: a stem, an MBConv stage or the head (an EfficientNet's), or a top-level module (a
    baseline's). A shape column a stage does not have (a pooling layer's kernel, a classifier's stride) is None."""

    name: str
    operator: str
    kernel: int | None
    stride: int | None
    in_channels: int
    out_channels: int
    repeats: int
    input_size: int
    output_size: int
    params: int
    macs: int
    activations: int  # elements kept for backward, per image


@dataclass(frozen=True)
class ModelCard:
    """What a spec costs: totals plus the per-stage table."""

    spec: ScalingSpec
    stages: tuple[StageRow, ...]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.stages)

    @property
    def macs(self) -> int:
        """Multiply-adds for one image at the spec's resolution (the paper's "FLOPs")."""
        return sum(r.macs for r in self.stages)

    @property
    def final_map(self) -> int:
        """Side of the last feature map, the one class activation maps are made from: the output of the last stage
        with a convolution (an EfficientNet's head; a ResNet's layer4, not its pooling or classifier)."""
        return next(r.output_size for r in reversed(self.stages) if r.kernel is not None)

    @property
    def flops_ratio(self) -> float | None:
        """Actual multiply-adds against the phi=0 model: what the rounding made of d * w^2 * r^2 (None for a
        conventional network: it has no phi=0 model)."""
        base = getattr(self.spec, "baseline", None)
        return None if base is None else self.macs / model_card(base).macs

    def activation_bytes(self, batch_size: int) -> int:
        """fp32 activations autograd keeps for a training step of ``batch_size`` images."""
        return BYTES_FP32 * batch_size * sum(r.activations for r in self.stages)

    def train_memory_bytes(self, batch_size: int) -> int:
        """Estimated training memory: activations plus weights, gradients and momentum (fp32)."""
        return self.activation_bytes(batch_size) + BYTES_FP32 * TRAINING_PARAM_COPIES * self.params


def _out(size: int, stride: int) -> int:
    # "same"-style padding (kernel // 2): the output side is ceil(input / stride).
    return math.ceil(size / stride)


def _conv_bn(cin: int, cout: int, k: int, out: int, groups: int = 1) -> tuple[int, int]:
    """(params, MACs) of a bias-free conv followed by BatchNorm (2 parameters per channel)."""
    weights = cout * (cin // groups) * k * k
    return weights + 2 * cout, weights * out * out


def _attention(block: Block, out: int) -> tuple[int, int, int]:
    """(params, MACs, saved activations) of the attention module on the ``expanded`` channels at side ``out``."""
    mid, sq = block.expanded, block.squeeze
    mlp_params, mlp_macs = 2 * mid * sq + sq + mid, 2 * mid * sq  # two 1x1 convs with bias, on a 1x1 map
    if block.attention == "se":
        return mlp_params, mlp_macs, mid * out * out
    if block.attention == "eca":
        k = block.eca_kernel
        return k, k * mid, mid * out * out  # one 1-D conv, no bias, along the C pooled values
    if block.attention == "cbam":
        k2 = CBAM_SPATIAL_KERNEL**2
        # The MLP runs twice (average- and max-pooled); the spatial conv maps 2 channels to 1 at every position.
        return mlp_params + 2 * k2, 2 * mlp_macs + 2 * k2 * out * out, 2 * mid * out * out + 3 * out * out
    return 0, 0, 0


def _block(block: Block, size: int) -> tuple[int, int, int, int]:
    """(params, MACs, saved activations, output side) of one MBConv or Fused-MBConv block."""
    mid, cout, out = block.expanded, block.out_channels, _out(size, block.stride)
    if block.fused:
        if not block.has_expansion:  # one kxk conv, input to output channels
            p, m = _conv_bn(block.in_channels, cout, block.kernel, out)
            return p, m, 3 * cout * out * out, out
        p1, m1 = _conv_bn(block.in_channels, mid, block.kernel, out)
        p2, m2 = _conv_bn(mid, cout, 1, out)
        return p1 + p2, m1 + m2, 3 * mid * out * out + 2 * cout * out * out, out
    params = macs = acts = 0
    if block.has_expansion:
        p, m = _conv_bn(block.in_channels, mid, 1, size)
        params, macs, acts = params + p, macs + m, acts + 3 * mid * size * size
    p, m = _conv_bn(mid, mid, block.kernel, out, groups=mid)
    params, macs = params + p, macs + m
    p, m, a = _attention(block, out)
    params, macs, acts = params + p, macs + m, acts + a
    p, m = _conv_bn(mid, cout, 1, out)
    params, macs = params + p, macs + m
    # conv out, BN out, SiLU out of the depthwise conv; project conv out and BN out.
    acts += 3 * mid * out * out + 2 * cout * out * out
    return params, macs, acts, out


@lru_cache(maxsize=512)
def model_card(spec: ScalingSpec) -> ModelCard:
    """The per-stage table and totals for ``spec``; microseconds, so the app calls it freely.

    ``ValueError`` (naming phi) when the spec is too large to build on these machines.
    """
    size = spec.resolution
    rows = []
    stem, stem_out = spec.stem_channels, _out(size, spec.stem_stride)
    p, m = _conv_bn(3, stem, 3, stem_out)
    rows.append(StageRow("stem", "Conv3x3", 3, spec.stem_stride, 3, stem, 1, size, stem_out, p, m,
                         3 * 3 * size * size + 3 * stem * stem_out * stem_out))
    size = stem_out
    for i, st in enumerate(spec.stages, start=1):
        params = macs = acts = 0
        start = size
        for block in st.blocks:
            p, m, a, size = _block(block, size)
            params, macs, acts = params + p, macs + m, acts + a
        rows.append(StageRow(f"stage {i}", st.operator, st.kernel, st.stride, st.in_channels,
                             st.out_channels, st.repeats, start, size, params, macs, acts))
    last, head, classes = spec.stages[-1].out_channels, spec.head_channels, spec.num_classes
    p, m = _conv_bn(last, head, 1, size)
    rows.append(StageRow("head", "Conv1x1, pool, FC", 1, 1, last, head, 1, size, size,
                         p + head * classes + classes, m + head * classes, 3 * head * size * size + head))
    card = ModelCard(spec, tuple(rows))
    _check_size(card)
    return card


def _check_size(card: ModelCard) -> None:
    spec = card.spec
    if card.params > MAX_PARAMS:
        raise ValueError(
            f"phi: {spec.name} would have {card.params / 1e9:.2f} G parameters, more than the "
            f"{MAX_PARAMS / 1e9:.0f} G this lab builds (lower phi or beta)"
        )
    act_bytes = card.activation_bytes(batch_size=1)
    if act_bytes > MAX_ACTIVATION_BYTES_PER_IMAGE:
        raise ValueError(
            f"phi: {spec.name} at {spec.resolution} px needs {act_bytes / 1024**3:.1f} GiB of activations "
            f"per training image, more than the {MAX_ACTIVATION_BYTES_PER_IMAGE / 1024**3:.0f} GiB limit "
            "(lower phi, gamma or the resolution)"
        )


def sweep(spec: ScalingSpec, phis: list[float]) -> list[ModelCard]:
    """Cards for the same coefficients, geometry and classes at each phi (custom, formula-scaled).

    A phi whose model would be too large to build is left out (its card cannot exist).
    """
    cards = []
    for phi in phis:
        try:
            cards.append(model_card(spec.baseline.replace(phi=float(phi))))
        except ValueError:
            continue
    return cards


def official_cards(spec: ScalingSpec) -> list[ModelCard]:
    """B0-B7 in the spec's geometry, resolution base and class count, built of its block (B0-B7 · ECA beside a
    formula line of ECA blocks; a V2's reference line is the released B0-B7)."""
    block = spec.baseline
    return [model_card(ScalingSpec.official(name, geometry=spec.geometry, num_classes=spec.num_classes,
                                            base_resolution=spec.base_resolution, output_stride=spec.output_stride,
                                            attention=block.attention, se_ratio=block.se_ratio,
                                            fused_stages=block.fused_stages))
            for name in OFFICIAL]


@lru_cache(maxsize=256)
def at_equal_macs(spec: ScalingSpec, method: str) -> ScalingSpec:
    """``spec``'s *actual* multiply-adds reached by ``method`` alone: the fair comparison of scaling methods, and the
    one rule every place that scales by one dimension uses (the explorer's Compare tab, the Train page and the
    command line, the studies). The nominal 2^phi of ``with_scaling`` is only shown where it is labelled so.

    The nominal 2^phi is not what rounding produces (phi=1, cifar: compound has 309 M MACs, 2.66x B0,
    because ceil(repeats x 1.2) turns 16 blocks into 23), so the single dimension's budget is solved
    against the card: MACs grow monotonically (in steps) with it, a bisection on its logarithm finds the
    step closest to the target, and the card is so cheap that this costs milliseconds.
    """
    if method == "compound":
        return spec
    target = model_card(spec).macs
    single = spec.with_scaling(method)

    def macs(budget: float) -> float:
        try:
            return model_card(single.replace(budget=budget)).macs
        except ValueError:  # below the minimum resolution, or too large to build
            return -math.inf if budget < 1 else math.inf

    low, high = 1e-3, 1e3
    for _ in range(40):  # 2^-40 of six decades: far finer than one step of rounding
        mid = math.sqrt(low * high)
        low, high = (mid, high) if macs(mid) < target else (low, mid)
    best = min((low, high), key=lambda b: abs(macs(b) - target))
    if not math.isfinite(macs(best)):
        raise ValueError(f"scaling: {method} alone cannot reach {target / 1e9:.3f} G multiply-adds here")
    return single.replace(budget=best)


def scaling_methods(spec: ScalingSpec) -> list[dict[str, object]]:
    """The spec's actual multiply-adds reached by each scaling method, one row each (the paper's Figure 3 setup)."""
    rows: list[dict[str, object]] = []
    for method in SCALINGS:
        try:
            s = at_equal_macs(spec, method)
            c = model_card(s)
        except ValueError as exc:
            rows.append({"method": method, "note": str(exc)})
            continue
        rows.append({"method": method, "depth x": round(s.depth_mult, 3), "width x": round(s.width_mult, 3),
                     "resolution": s.resolution, "params (M)": round(c.params / 1e6, 2),
                     "MACs (G)": round(c.macs / 1e9, 3), "FLOPs vs phi=0": round(c.flops_ratio, 2),
                     "final map": f"{c.final_map}x{c.final_map}"})
    return rows


def block_table(spec: ScalingSpec) -> list[dict[str, object]]:
    """``spec`` with each attention (SE, ECA, CBAM, none) and with its first three stages fused: params and MACs,
    the cost of the block alone (the Lesson's and the README's table)."""
    variants = [spec.replace(attention=a) for a in ATTENTIONS] + [spec.replace(fused_stages=3)]
    # Exact parameter counts: ECA's few weights per block vanish in any rounding.
    return [{"block": ", ".join(s.block_names) or "SE 0.25 (the paper's)", "params": f"{model_card(s).params:,}",
             "MACs (M)": round(model_card(s).macs / 1e6, 1)} for s in variants]


def official_vs_formula(spec: ScalingSpec) -> list[dict[str, object]]:
    """B0-B7 as released next to what alpha^phi, beta^phi, gamma^phi (the spec's coefficients) would give."""
    rows: list[dict[str, object]] = []
    for card in official_cards(spec):
        s = card.spec
        try:
            formula = spec.baseline.replace(phi=s.phi)
            formula_macs = model_card(formula).macs
        except ValueError as exc:
            rows.append({"variant": s.name, "note": str(exc)})
            continue
        # Released and formula side by side in one cell each: five columns fit a projector's width.
        rows.append({"variant": s.name, "width: released / formula": f"{s.width_mult:g} / {formula.width_mult:.2f}",
                     "depth: released / formula": f"{s.depth_mult:g} / {formula.depth_mult:.2f}",
                     "resolution: released / formula": f"{s.resolution} / {formula.resolution} px",
                     "MACs released ÷ formula": round(card.macs / formula_macs, 2)})
    return rows


COMPARED = (("output", "output_size"), ("repeats", "repeats"), ("channels", "out_channels"), ("params", "params"),
            ("MACs", "macs"))


def side_by_side(a: ModelCard, b: ModelCard) -> list[dict[str, object]]:
    """Two cards stage by stage (same stage names: two EfficientNets): per stage, ``(A's, B's)`` for each measure
    of ``COMPARED``, plus a totals row (None where a total means nothing); the explorer highlights differences."""
    if [r.name for r in a.stages] != [r.name for r in b.stages]:
        raise ValueError("spec: only two EfficientNets share their stages; compare a baseline by its totals")
    rows: list[dict[str, object]] = [{"stage": ra.name, **{label: (getattr(ra, key), getattr(rb, key))
                                                           for label, key in COMPARED}}
                                     for ra, rb in zip(a.stages, b.stages, strict=True)]
    totals = {label: (sum(getattr(r, key) for r in a.stages), sum(getattr(r, key) for r in b.stages))
              if key in ("repeats", "params", "macs") else None for label, key in COMPARED}
    return [*rows, {"stage": "total", **totals}]
