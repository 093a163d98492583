"""Command-line flags that describe a spec, shared by ``effnet card``, ``effnet.train`` and ``effnet.study``."""

from __future__ import annotations

import argparse

from effnet.baselines import MODELS, BaselineSpec
from effnet.scaling import (
    GEOMETRIES,
    OFFICIAL,
    PAPER_ALPHA,
    PAPER_BETA,
    PAPER_GAMMA,
    SCALINGS,
    ScalingSpec,
)


def add_spec_arguments(parser: argparse.ArgumentParser, num_classes_default: int | None = 100) -> None:
    """``--variant`` or ``--phi/--alpha/--beta/--gamma``, plus geometry, classes and scaling method."""
    g = parser.add_argument_group("model spec")
    g.add_argument("--model", choices=["efficientnet", *MODELS], type=str.lower, default="efficientnet",
                   help="a conventional network instead of EfficientNet (torchvision's; --geometry, --num-classes "
                        "and --base-resolution apply)")
    g.add_argument("--variant", choices=sorted(OFFICIAL), type=str.lower, help="an official variant (b0-b7)")
    g.add_argument("--phi", type=float, help="compound coefficient of a custom spec")
    g.add_argument("--alpha", type=float, default=PAPER_ALPHA, help="depth base (default %(default)s)")
    g.add_argument("--beta", type=float, default=PAPER_BETA, help="width base (default %(default)s)")
    g.add_argument("--gamma", type=float, default=PAPER_GAMMA, help="resolution base (default %(default)s)")
    g.add_argument("--geometry", choices=GEOMETRIES, default="cifar")
    g.add_argument("--num-classes", type=int, default=num_classes_default)
    g.add_argument("--base-resolution", type=int, help="resolution at phi=0 (224 imagenet, 32 cifar)")
    g.add_argument("--output-stride", type=int, choices=(8, 16, 32))
    g.add_argument("--dropout", type=float)
    g.add_argument("--scaling", choices=SCALINGS, default="compound",
                   help="compound, or one dimension alone at the same FLOPs budget (2^phi)")


def spec_from_args(args: argparse.Namespace, num_classes: int | None = None,
                   **extra: object) -> ScalingSpec | BaselineSpec:
    """The spec the flags describe; ``ValueError`` (naming the field) when they don't make one."""
    if getattr(args, "model", "efficientnet") != "efficientnet":
        return _baseline_from_args(args, num_classes, **extra)
    if (args.variant is None) == (args.phi is None):
        raise ValueError("variant: give either --variant b0..b7 or --phi (with --alpha/--beta/--gamma)")
    common = dict(
        geometry=args.geometry,
        num_classes=num_classes if num_classes is not None else args.num_classes,
        base_resolution=args.base_resolution,
        output_stride=args.output_stride,
        dropout=args.dropout,
        **extra,
    )
    if args.variant is not None:
        return ScalingSpec.official(args.variant, **common).with_scaling(args.scaling)
    return ScalingSpec(phi=args.phi, alpha=args.alpha, beta=args.beta, gamma=args.gamma, scaling=args.scaling, **common)


def _baseline_from_args(args: argparse.Namespace, num_classes: int | None, **extra: object) -> BaselineSpec:
    given = [flag for flag, value in (("--variant", args.variant), ("--phi", args.phi),
                                      ("--output-stride", args.output_stride), ("--dropout", args.dropout))
             if value is not None]
    if args.scaling != "compound":
        given.append("--scaling")
    if given:
        raise ValueError(f"model: {', '.join(given)} describe an EfficientNet, not {MODELS[args.model][0]}")
    return BaselineSpec(model=args.model, geometry=args.geometry,
                        num_classes=num_classes if num_classes is not None else args.num_classes,
                        base_resolution=args.base_resolution, **extra)
