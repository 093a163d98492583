"""The prepared device check cannot rot while no GPU is at hand: its dry run on the CPU, in the suite."""

import json
import os
import subprocess

import pytest
from conftest import PROJECT

pytestmark = pytest.mark.slow


def test_the_gpu_check_dry_run_writes_its_report(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "DRY_RUN": "1", "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "bench/gpu.sh"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["device"] == "cpu" and report["dry_run"] is True
    modes = {c["mode"]: c for c in report["cases"]}
    assert set(modes) == {"baseline", "eager", "graphs", "compile"}
    for case in report["cases"]:
        assert {"variant", "batch_size", "mode"} <= case.keys()
        assert ("skipped" in case) != ("img_s" in case and "epoch_s" in case), case
    assert modes["baseline"]["img_s"] > 0 and modes["eager"]["img_s"] > 0
    assert "CUDA device" in modes["graphs"]["skipped"]
    e2e = report["end_to_end"]
    assert e2e["epochs"] == [1, 2] and e2e["killed_mid_epoch"] and e2e["resumed"]
    assert e2e["bitwise_equal"], e2e  # on a CPU the resumed run's weights equal the uninterrupted run's
    assert e2e["queued_run"] == "finished" and -0.5 <= e2e["cam_road"] <= 0.5
    assert "end to end: epochs [1, 2]" in done.stdout
