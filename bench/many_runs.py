"""A class server after a term: 2,000 runs in the checkpoints folder. How long listing them and drawing the
Train page take (targets: list_runs < 200 ms once its files were parsed, the Train page < 5 s).

    python bench/many_runs.py [--runs 2000]

The runs are written with the lab's own writers (tests/fake_runs.py: queue runs with job.json, metrics and
status), finished and failed mixed; the Train page is rendered by Streamlit's AppTest in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from fake_runs import fake_run, row  # noqa: E402

from effnet.training import runs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "checkpoints"
        for i in range(args.runs):
            fake_run(root, f"20261201-{i:06d}-b0-{i:04x}", [row(1, 40.0, 41.0), row(2, 50.0, 51.0)],
                     state="finished" if i % 10 else "failed", job={"label": f"run {i}", "owner": f"student-{i % 30}"})
        start = time.perf_counter()
        runs.list_runs(root)
        cold = time.perf_counter() - start
        warm = []
        for _ in range(5):
            start = time.perf_counter()
            runs.list_runs(root)
            warm.append(time.perf_counter() - start)
        os.environ.update(EFFNET_CHECKPOINTS=str(root), EFFNET_DATA=str(Path(tmp) / "data"))
        os.chdir(ROOT)
        from streamlit.testing.v1 import AppTest

        at = AppTest.from_file(str(ROOT / "lab.py"), default_timeout=120)
        at.run()
        pages = []
        for _ in range(3):
            start = time.perf_counter()
            at.switch_page("views/train.py").run()
            pages.append(time.perf_counter() - start)
        assert not at.exception, at.exception
    print(f"{args.runs} runs: list_runs first look {cold * 1000:.0f} ms, then median {statistics.median(warm) * 1000:.0f} ms "
          f"(target < 200 ms); Train page {min(pages):.2f}-{max(pages):.2f} s (target < 5 s)")


if __name__ == "__main__":
    main()
