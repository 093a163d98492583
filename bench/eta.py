"""How honest the Train page's ETA is: real runs, predicted after the first epoch against the time they then took,
on a quiet machine and beside a competing load (one busy process per core, as when a second run or a class's
pages share the CPU).

    python bench/eta.py [--trials 3]

Each run trains the smallest spec on a generated CIFAR-format archive (tests/cifar_files.py): 4 epochs, as the
test does (tests/test_train.py), and a longer 6-epoch one at phi=-3. The ETA is read as the page reads it
(``runs.progress``; tests/eta_watch.py). Reported: the error after the first epoch ((predicted - actual) / actual)
and the ETA at the start of the last evaluation as a share of the time then left.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from cifar_files import write_cifar_archive  # noqa: E402
from eta_watch import watch  # noqa: E402

RUNS = {"phi=-4, 4 epochs": ["--phi", "-4", "--epochs", "4", "--batch-size", "16", "--eval-subset", "100"],
        "phi=-3, 6 epochs": ["--phi", "-3", "--epochs", "6", "--batch-size", "32", "--eval-subset", "100"]}


def busy() -> None:
    """A competing CPU-bound process (a core's worth of work)."""
    while True:
        sum(i * i for i in range(100_000))


def trial(data: Path, out: Path, flags: list[str]) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "effnet.train", "--geometry", "cifar", "--lr", "0.05", "--val-size", "64",
           "--device", "cpu", "--seed", "0", "--data-dir", str(data), "--out", str(out), *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = watch(proc, out, epochs=int(flags[flags.index("--epochs") + 1]))
    return seen.error, seen.last_evaluation.eta_s / seen.last_evaluation_left_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_cifar_archive(data / "cifar-100-python.tar.gz", n_train=320, n_test=100)
        for load in ("quiet", "loaded"):
            others = [multiprocessing.Process(target=busy, daemon=True) for _ in range(os.cpu_count() or 1)]
            for other in others if load == "loaded" else []:
                other.start()
            for name, flags in RUNS.items():
                errors, shares = [], []
                for i in range(args.trials):
                    error, share = trial(data, Path(tmp) / f"{load}-{name}-{i}".replace(" ", ""), flags)
                    errors.append(error)
                    shares.append(share)
                print(f"{load:6} {name}: ETA error after epoch 1 median {statistics.median(errors):+.0%}, worst "
                      f"{max(errors, key=abs):+.0%}; at the last evaluation {min(shares):.0%}-{max(shares):.0%} of "
                      "the time left", flush=True)
            for other in others:
                if other.is_alive():
                    other.terminate()
            time.sleep(0.5)


if __name__ == "__main__":
    main()
