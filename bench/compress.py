"""Compression on this CPU: int8 and 30% channel pruning against fp32, on a run trained on real images.

    python bench/compress.py                 # trains a small run on scikit-learn's digits first (~1 min)
    python bench/compress.py --run checkpoints/<run> [--data-dir DIR]

Prints each variant (size, batch-1 and batch-32 latency, test top-1) and the ratios the targets ask
for, all measured in one process (effnet.compression.compress: interleaved latency rounds, same test images):
int8 size <= 0.3x fp32, int8 batch-1 >= 1.5x faster than fp32 eager, int8 top-1 within 2 points;
pruned-0.3 batch-32 >= 1.3x faster than fp32, its accuracy drop reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from effnet.compression import compress  # noqa: E402


def digits_folder(root: Path) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target, strict=True)):
        folder = root / f"digit-{y}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 16).clip(0, 255).astype(np.uint8)).convert("RGB").save(folder / f"{i}.png")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run")
    p.add_argument("--data-dir")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="effnet-bench-compress-"))
    run, data_dir = args.run, args.data_dir
    if run is None:
        data_dir = str(digits_folder(tmp / "digits"))
        run = str(tmp / "run")
        subprocess.run([sys.executable, "-m", "effnet.train", "--dataset", "folder", "--data-dir", data_dir,
                        "--phi", "-3", "--epochs", "6", "--batch-size", "64", "--lr", "0.05", "--val-size", "200",
                        "--augment", "none", "--device", "cpu", "--out", run], check=True, cwd=ROOT)
    result = compress.run(Path(run), tmp / "out", int8=True, qat_epochs=args.qat_epochs, ratios=[0.3],
                          finetune_epochs=args.finetune_epochs, data_dir=data_dir)
    rows = {r["name"]: r for r in result["variants"]}
    fp32, int8, pruned = rows["fp32"], rows["int8"], rows["pruned-0.3"]
    print(f"\n{result['spec']}, {result['test_images']} test images, {result['threads']} threads")
    print(f"int8 size            {int8['size_bytes'] / fp32['size_bytes']:.3f}x fp32 (target <= 0.3)")
    print(f"int8 batch-1 speed   {fp32['latency_ms_b1'] / int8['latency_ms_b1']:.2f}x fp32 eager (target >= 1.5); "
          f"ORT fp32 alone {fp32['latency_ms_b1'] / rows['fp32-onnx']['latency_ms_b1']:.2f}x")
    print(f"int8 top-1           {int8['test_top1'] - fp32['test_top1']:+.2f} points (target within 2)")
    if "int8-qat" in rows:
        print(f"int8-qat top-1       {rows['int8-qat']['test_top1'] - fp32['test_top1']:+.2f} points")
    print(f"pruned-0.3 batch-32  {fp32['latency_ms_b32'] / pruned['latency_ms_b32']:.2f}x fp32 (target >= 1.3), "
          f"top-1 {pruned['test_top1'] - fp32['test_top1']:+.2f} points, params {pruned['params'] / fp32['params']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
