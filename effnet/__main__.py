"""``python -m effnet card b3``: the model card in a terminal (no model is built).

Examples::

    python -m effnet card b3 --geometry imagenet --num-classes 1000
    python -m effnet card --phi 1.5 --alpha 1.2 --beta 1.1 --gamma 1.15 --batch-size 64
    python -m effnet card --model resnet18 --geometry cifar --num-classes 100 --json
"""

from __future__ import annotations

import argparse
import json
import sys

from effnet.arch import specs
from effnet.arch.baselines import BaselineSpec
from effnet.arch.card import ModelCard
from effnet.training.flags import add_spec_arguments, spec_from_args


def _or_dash(value: int | None) -> str:
    """A shape column a stage does not have (a classifier's kernel) prints as "-", never as 0."""
    return "-" if value is None else str(value)


def format_card(card: ModelCard, batch_size: int) -> str:
    """A plain-text card: the spec's multipliers, the per-stage table and the totals."""
    s = card.spec
    if isinstance(s, BaselineSpec):
        lines = [f"{s.name} (torchvision's {s.model})  geometry={s.geometry}  classes={s.num_classes}  "
                 f"resolution {s.resolution} px", "per top-level module, counted once with FlopCounterMode", ""]
    elif s.is_v2:
        lines = [f"{s.name}  geometry={s.geometry} (output stride {s.stride})  classes={s.num_classes}",
                 f"EfficientNetV2's own stage table (torchvision's, not scaled from B0)  resolution {s.resolution} px",
                 ""]
    else:
        lines = [
            f"{s.name}  geometry={s.geometry} (output stride {s.stride})  classes={s.num_classes}",
            f"depth x{s.depth_mult:.3f}  width x{s.width_mult:.3f}  resolution {s.resolution} px"
            f"  (formula at phi={s.phi:g}: depth x{s.formula_depth_mult:.3f}, width x{s.formula_width_mult:.3f},"
            f" {s.formula_resolution} px)",
            f"alpha*beta^2*gamma^2 = {s.constraint:.3f}",
            "",
        ]
    w = max(8, *(len(r.name) for r in card.stages))  # DenseNet's stages are named features.denseblock1 ...
    lines += [
        f"{'stage':<{w}} {'operator':<22} {'k':>2} {'s':>2} {'in':>5} {'out':>5} {'rep':>4} {'input':>9} {'output':>9}"
        f" {'params':>12} {'MACs':>15}",
    ]
    for r in card.stages:
        lines.append(
            f"{r.name:<{w}} {r.operator:<22} {_or_dash(r.kernel):>2} {_or_dash(r.stride):>2} {r.in_channels:>5}"
            f" {r.out_channels:>5}"
            f" {r.repeats:>4} {f'{r.input_size}x{r.input_size}':>9} {f'{r.output_size}x{r.output_size}':>9}"
            f" {r.params:>12,} {r.macs:>15,}"
        )
    gib = 1024**3
    lines += [
        "",
        f"params           {card.params:,}",
        f"multiply-adds    {card.macs:,} ({card.macs / 1e9:.3f} G; the paper's \"FLOPs\")",
        f"training memory  ~{card.train_memory_bytes(batch_size) / gib:.2f} GiB at batch {batch_size}"
        f" (activations {card.activation_bytes(batch_size) / gib:.2f} GiB, fp32)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    card_p = sub.add_parser("card", help="print the model card of a spec")
    card_p.add_argument("name", nargs="?", help="official variant b0..b7, v2-s, v2-m, v2-l (or use --phi)")
    add_spec_arguments(card_p)
    card_p.add_argument("--batch-size", type=int, default=128, help="for the memory estimate")
    card_p.add_argument("--json", action="store_true", help="print the card as JSON")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"batch-size: must be at least 1, got {args.batch_size}")
    if args.name is not None:
        if args.variant is not None:
            parser.error("give the variant once: either 'card b3' or 'card --variant b3'")
        args.variant = args.name.lower()
    try:
        card = specs.card(spec_from_args(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        rows = [r.__dict__ for r in card.stages]
        print(json.dumps({"spec": card.spec.to_dict(), "params": card.params, "macs": card.macs,
                          "resolution": card.spec.resolution, "stages": rows}, indent=2))
    else:
        print(format_card(card, args.batch_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
