#!/usr/bin/env bash
# The one prepared device check (issue 19): bench/gpu_check.py, whose docstring says what it measures.
#   DEVICE=cuda OUT=/tmp/out bash bench/gpu.sh    # a GPU machine (the device tool sets OUT): under 8 minutes
#   DEVICE=cpu DRY_RUN=1 bash bench/gpu.sh        # toy sizes on a CPU: the suite runs this, so it cannot rot
# Reads DEVICE (default cuda), DRY_RUN (1: toy sizes) and OUT (default bench/); writes $OUT/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 DEVICE="${DEVICE:-cuda}" DRY_RUN="${DRY_RUN:-0}" OUT="${OUT:-bench}"
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'| GPU:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
python bench/gpu_check.py
python - <<'PY'
import json, os
from pathlib import Path
report = json.loads((Path(os.environ["OUT"]) / "gpu.json").read_text())
base = {c["variant"]: c["img_s"] for c in report["cases"] if c["mode"] == "baseline"}
print(f"\n{report['device']} (torch {report['torch']}{', dry run' if report['dry_run'] else ''})")
for c in report["cases"]:
    if "skipped" in c:
        print(f"  {c['variant']:<4} batch {c['batch_size']:<4} {c['mode']:<9} skipped: {c['skipped']}")
    else:
        print(f"  {c['variant']:<4} batch {c['batch_size']:<4} {c['mode']:<9} {c['img_s']:9.1f} img/s  "
              f"{c['epoch_s']:8.1f} s/epoch  {c['img_s'] / base[c['variant']]:5.2f}x baseline")
e = report["end_to_end"]
print(f"  end to end: epochs {e.get('epochs')}, test top-1 {e.get('test_top1')}, killed mid-epoch "
      f"{e.get('killed_mid_epoch')}, resumed {e.get('resumed')}, max weight difference {e.get('max_weight_difference')}"
      f", queued run {e.get('queued_run')}, CAM ROAD {e.get('cam_road')}")
PY
