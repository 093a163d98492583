"""Is the "Measure on this machine" spinner honest? Its estimate against the measurement's real wall time.

The explorer's spinner promises "about N s" from ``measure.measure_estimate_s`` (the model card and the
CPU's calibrated multiply-add rate, no model built). This times ``measure.measure_speed`` for several specs
and batches, as the page calls it, and prints real / estimate: near 1 is honest; far above 1 is the
"a few seconds" that took 22 s (classroom issue, item 14).

    python bench/measure_estimate.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from effnet import ScalingSpec
from effnet.training.measure import measure_estimate_s, measure_speed

CASES = [  # (label, spec, batch): the explorer's default, its speed tab's default batch, bigger models
    ("B0 cifar", ScalingSpec.official("b0"), 16),
    ("B0 cifar", ScalingSpec.official("b0"), 64),
    ("B3 cifar", ScalingSpec.official("b3"), 16),
    ("phi=-4 cifar", ScalingSpec(phi=-4, geometry="cifar", num_classes=100, base_resolution=32), 4),
    ("B0 imagenet 224", ScalingSpec.official("b0", geometry="imagenet"), 16),
    ("B4 imagenet 380", ScalingSpec.official("b4", geometry="imagenet"), 4),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    print(f"{platform.processor() or platform.machine()}, torch threads as the app uses them\n")
    print("| spec | batch | estimate s | real s | real / estimate |\n|---|---:|---:|---:|---:|")
    for label, spec, batch in CASES:
        estimate = measure_estimate_s(spec, batch)
        start = time.perf_counter()
        measure_speed(spec, batch)
        real = time.perf_counter() - start
        rows.append({"spec": label, "batch": batch, "estimate_s": estimate, "real_s": real})
        print(f"| {label} | {batch} | {estimate:.1f} | {real:.1f} | {real / estimate:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
