#!/usr/bin/env bash
# The whole GPU benchmark in one go: under 5 minutes, no downloads, PyTorch >= 2.4, synthetic data.
#   bash bench/gpu.sh            # results as JSON in $OUT (the device tool) or bench/, summary on stdout
# Runs our training step against the torchvision + DataLoader baseline for B0 and B3 (cifar geometry),
# plus B0 with torch.compile, and prints seconds per 45k-image CIFAR-100 epoch for each.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench}"
device="${DEVICE:-cuda}"
steps="${STEPS:-30}"
export PYTHONUNBUFFERED=1
python - <<'PY'
import torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__)
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(0))
PY
run() { python bench/train_throughput.py --device "$device" --steps "$steps" --rounds 3 --images 16384 "$@"; }
run --variant b0 --batch-size 256 --json "$out/gpu_b0.json"
run --variant b3 --batch-size 256 --json "$out/gpu_b3.json"
run --variant b0 --batch-size 256 --compile --json "$out/gpu_b0_compile.json"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
for name in ("gpu_b0", "gpu_b3", "gpu_b0_compile"):
    r = json.loads((Path(sys.argv[1]) / f"{name}.json").read_text())
    print(f"{name:<15} {r['device']}: baseline {r['baseline_img_s']:.0f} img/s, ours {r['ours_img_s']:.0f} img/s, "
          f"ratio {r['ratio']:.2f}x, epoch {r['ours_epoch_s']:.1f} s (baseline {r['baseline_epoch_s']:.1f} s)")
PY
