"""CAM latency: the grid the CAM page draws for one uploaded photo, four variants, models already cached.

Per repeat: decode the upload bytes, then for each of B0-B3 (cifar geometry) run ``explain`` and
``overlay``, exactly as views/cam.py does. Prints the best and median grid time against the target
(2 s on the 2-core CPU machine), and each method's time for one model.

    python bench/cam_latency.py [--method gradcam] [--repeats 5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from effnet import ScalingSpec, build_model
from effnet.analysis.cam import METHODS, explain, overlay
from effnet.data.images import decode_image

TARGET_S = 2.0


def photo_bytes() -> bytes:
    """A 1024x768 JPEG with some structure (a smooth gradient plus noise), like a phone photo downscaled."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:768, 0:1024]
    base = np.stack([xx / 4, yy / 3, (xx + yy) / 7], axis=-1) % 255
    img = Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def grid(models, data: bytes, method: str) -> None:
    picture = decode_image(data, "upload.jpg")
    for model, spec in models:
        overlay(picture, explain(model, spec, picture, method=method).heatmap)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="gradcam", choices=list(METHODS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()

    torch.manual_seed(0)
    models = [(build_model(spec).eval(), spec) for spec in
              (ScalingSpec.official(f"b{i}", geometry="cifar", num_classes=100) for i in range(4))]
    data = photo_bytes()
    grid(models, data, args.method)  # warm-up: first-call allocations, lazy imports
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        grid(models, data, args.method)
        times.append(time.perf_counter() - start)
    per_method = {}
    for method in METHODS:
        start = time.perf_counter()
        grid(models[:1], data, method)
        per_method[method] = time.perf_counter() - start

    best, median = min(times), statistics.median(times)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"CAM grid, 4 variants (B0-B3 cifar), 1024x768 JPEG, {args.method}: best {best:.3f} s, "
          f"median {median:.3f} s (target < {TARGET_S:.0f} s: {median / TARGET_S:.2f} of the budget)")
    for method, seconds in per_method.items():
        print(f"  one model (B0), {method:<10} {seconds:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"method": args.method, "best_s": best, "median_s": median,
                                               "target_s": TARGET_S, "one_model_s": per_method}, indent=2) + "\n")


if __name__ == "__main__":
    main()
