"""How fast is the analytic model card, against tracing the model with FlopCounterMode?

For B0-B7 (imagenet geometry, paper resolutions) and fresh custom specs, time
(a) building the spec and its card from scratch (caches cleared), and
(b) building the model on the meta device and tracing one forward pass under FlopCounterMode,
the obvious alternative. Prints both and their ratio; the app recomputes (a) on every slider move.

    python bench/model_card.py [--repeats 5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from effnet import ScalingSpec, build_model, model_card


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def card_from_scratch(make: Callable[[], ScalingSpec]) -> int:
    model_card.cache_clear()
    return model_card(make()).macs


def traced(make: Callable[[], ScalingSpec]) -> int:
    spec = make()
    with torch.device("meta"):
        model = build_model(spec).eval()
        x = torch.empty(1, 3, spec.resolution, spec.resolution)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    cases: list[tuple[str, Callable[[], ScalingSpec]]] = [
        (f"B{i}", lambda i=i: ScalingSpec.official(f"b{i}", geometry="imagenet", num_classes=1000)) for i in range(8)
    ]
    cases += [
        ("phi=1.5 cifar", lambda: ScalingSpec(phi=1.5, geometry="cifar")),
        ("phi=-3 cifar", lambda: ScalingSpec(phi=-3, geometry="cifar")),
        ("phi=6 a=1.3 imagenet", lambda: ScalingSpec(phi=6, alpha=1.3, beta=1.08, gamma=1.12, geometry="imagenet")),
        ("width-only phi=4", lambda: ScalingSpec(phi=4, scaling="width", geometry="imagenet")),
    ]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'spec':<22} {'card ms':>9} {'trace ms':>9} {'ratio':>8}  MACs agree")
    rows = []
    for name, make in cases:
        card_s = best_seconds(lambda make=make: card_from_scratch(make), args.repeats)
        trace_s = best_seconds(lambda make=make: traced(make), max(1, args.repeats // 2))
        agree = abs(card_from_scratch(make) - traced(make)) <= 0.005 * traced(make)
        rows.append({"spec": name, "card_ms": card_s * 1e3, "trace_ms": trace_s * 1e3, "ratio": trace_s / card_s})
        print(f"{name:<22} {card_s * 1e3:>9.3f} {trace_s * 1e3:>9.1f} {trace_s / card_s:>7.0f}x  {agree}")
    worst = max(r["card_ms"] for r in rows)
    print(f"slowest card: {worst:.3f} ms (target < 50 ms); smallest speed-up: {min(r['ratio'] for r in rows):.0f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "slowest_card_ms": worst}, f, indent=2)


if __name__ == "__main__":
    main()
