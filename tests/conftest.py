"""Shared fixtures: small CIFAR-100 data in the official format, and a tiny training command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cifar_files import write_cifar_archive

from effnet import ScalingSpec
from effnet.config import TrainConfig

PROJECT = Path(__file__).resolve().parents[1]

# The smallest useful spec: phi=-4 in the cifar geometry is 18 px, 1.3 M parameters.
TINY = ["--phi", "-4", "--geometry", "cifar", "--batch-size", "32", "--lr", "0.05", "--val-size", "64",
        "--eval-subset", "64", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding a generated ``cifar-100-python.tar.gz`` (320 train, 100 test images)."""
    root = tmp_path_factory.mktemp("data")
    write_cifar_archive(root / "cifar-100-python.tar.gz", n_train=320, n_test=100)
    return root


def serve_app_from(monkeypatch: pytest.MonkeyPatch, checkpoints: Path, data: Path, **env: str) -> None:
    """The environment ``streamlit run app.py`` has on a server: checkpoints and data folders, the project."""
    for name, value in {"EFFNET_CHECKPOINTS": checkpoints, "EFFNET_DATA": data, "PYTHONPATH": PROJECT, **env}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.chdir(PROJECT)


def open_app(page: str | None = None, timeout: int = 120, **query: str):
    """The real app under Streamlit's AppTest (query parameters first), switched to ``page`` when given."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PROJECT / "app.py"), default_timeout=timeout)
    at.query_params.update(query)
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at


def tiny_config(cifar_dir: Path, **changes: object) -> TrainConfig:
    """The queue's version of TINY: a one-epoch run of the smallest spec on the generated archive."""
    base = dict(spec=ScalingSpec(phi=-4), epochs=1, batch_size=32, lr=0.05, val_size=64, eval_subset=64,
                device="cpu", data_dir=str(cifar_dir))
    return TrainConfig(**{**base, **changes})


def python_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return env


def train_cmd(out: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "effnet.train", *TINY, "--data-dir", str(data), "--out", str(out), *extra]


def run_train(out: Path, data: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(out, data, *extra), capture_output=True, text=True, timeout=timeout,
                          cwd=PROJECT, env=python_env())


def wait_for(predicate: Callable[[], object], timeout: float = 120, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory: pytest.TempPathFactory, cifar_dir: Path) -> Path:
    """A checkpoints folder with two finished tiny runs, for the results and CAM pages."""
    root = tmp_path_factory.mktemp("finished")
    for name, phi in (("tiny-a", "-4"), ("tiny-b", "-3.5")):
        done = run_train(root / name, cifar_dir, "--epochs", "2", "--phi", phi)
        assert done.returncode == 0, done.stderr
    return root


STUDY_TRAIN = ["--epochs", "1", "--batch-size", "32", "--subset", "96", "--val-size", "64", "--eval-subset", "64",
               "--device", "cpu", "--lr", "0.05"]


def cli(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` from the project folder, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=PROJECT, env=python_env())


@pytest.fixture(scope="session")
def methods_study(tmp_path_factory: pytest.TempPathFactory, cifar_dir: Path) -> tuple[Path, Path]:
    """(checkpoints folder, study folder): a real methods study at phi=-2, its four runs one epoch each."""
    root = tmp_path_factory.mktemp("study") / "checkpoints"
    out = root / "studies" / "methods"
    done = cli("effnet.study", "methods", "--phi", "-2", *STUDY_TRAIN, "--data-dir", str(cifar_dir), "--out", str(out),
               "--checkpoints", str(root), "--wait")
    assert done.returncode == 0, done.stderr
    return root, out
