"""Shared fixtures and the suite's rules: no network, timeouts scaled to the machine, a fast tier, shared trained data.

- **No network.** Every test process, and every process a test starts (``PYTHONPATH`` carries
  ``tests/offline``), can reach only loopback and Unix sockets; anything else fails at once naming the host.
- **Timeouts** (subprocesses, waits, browser waits and the per-test limit) are ``scaled(seconds)``: generous
  on this 2-core machine and multiplied on a slower or busier one (``EFFNET_TEST_SLOWDOWN``, else measured
  when the session starts).
- **Tiers.** ``python -m pytest -m "not slow"`` is the edit loop (under 3 minutes); tests that train, start
  servers, browsers or a cluster are ``slow`` (marked, or by the shared fixtures they use).
- **Shared fixtures that fail say it once**: the first test that needs one errors with the reason, the others
  are skipped pointing at it, instead of thirty copies of the same traceback.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PROJECT = TESTS.parent
OFFLINE = TESTS / "offline"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(OFFLINE))

import offline_guard  # noqa: E402
from cifar_files import write_cifar_archive  # noqa: E402

offline_guard.install()
# Every process the tests start finds the project and the network guard, and never probes for GPUs.
TEST_PATH = os.pathsep.join([str(OFFLINE), str(PROJECT)])
os.environ["PYTHONPATH"] = TEST_PATH
os.environ.setdefault("EFFNET_DEVICES", "cpu")
# Workers share the cores (pytest-xdist): each trains with its share, so two never fight over one core.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // WORKERS)))

from effnet import ScalingSpec  # noqa: E402
from effnet.training.config import TrainConfig  # noqa: E402

# ----------------------------------------------------------------------------- timeouts that follow the machine
REFERENCE_PROBE_S = 0.045  # the probe below on the project's 2-core machine, quiet


def _measure_slowdown() -> float:
    given = os.environ.get("EFFNET_TEST_SLOWDOWN")
    if given:
        return max(1.0, float(given))
    start = time.perf_counter()
    sum(i * i for i in range(400_000))
    took = time.perf_counter() - start
    busy = os.getloadavg()[0] / (os.cpu_count() or 1)
    sharing = WORKERS / (os.cpu_count() or 1)  # workers beyond the cores wait their turn
    return min(10.0, max(1.0, took / REFERENCE_PROBE_S, 1.0 + busy, 2 * sharing))


SLOWDOWN = _measure_slowdown()


def scaled(seconds: float) -> float:
    """A timeout of ``seconds`` on the reference machine, stretched by how slow or busy this one is."""
    return seconds * SLOWDOWN


def ms(seconds: float) -> float:
    """``scaled`` in milliseconds, for Playwright."""
    return 1000 * scaled(seconds)


# Tests that use these fixtures train models or start servers: they belong to the slow tier.
SLOW_FIXTURES = {"finished_runs", "methods_study", "digits_run", "server", "study_server", "own_server", "browser",
                 "slurm_cluster", "notebook_runs", "object_model", "with_runs"}


def pytest_report_header(config: pytest.Config) -> str:
    return f"effnet-lab: timeouts x{SLOWDOWN:.2f} (EFFNET_TEST_SLOWDOWN), network off (tests/offline)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    default = float(config.getini("timeout") or 300)
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        marker = item.get_closest_marker("timeout")
        base = float(marker.args[0]) if marker and marker.args else default
        item.add_marker(pytest.mark.timeout(scaled(base)))


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder made by ``build`` once for the whole run, however many workers ask (the first builds it under a
    lock; the others wait and use it): trained fixtures cost their minutes once."""
    import shutil

    from effnet.base import locks

    base = tmp_path_factory.getbasetemp()
    shared_root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    target = shared_root / f"shared-{name}"
    with locks.exclusive(shared_root / f"shared-{name}.lock"):
        if not (target / ".built").is_file():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            build(target)
            (target / ".built").touch()
    return target


def shared(fixture: Callable) -> Callable:
    """A session fixture that, once it failed, skips the other tests that need it (pointing at the first error)."""
    failed: list[str] = []

    @functools.wraps(fixture)
    def wrapper(*args, **kwargs):
        if failed:
            pytest.skip(f"the shared fixture {fixture.__name__} failed in an earlier test: {failed[0]}")
        try:
            return fixture(*args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, pytest.skip.Exception):
                failed.append(f"{exc.__class__.__name__}: {str(exc)[:300]}")
            raise

    return wrapper


# ----------------------------------------------------------------------------- data and small runs
# The smallest useful spec: phi=-4 in the cifar geometry is 18 px, 1.3 M parameters.
TINY = ["--phi", "-4", "--geometry", "cifar", "--batch-size", "32", "--lr", "0.05", "--val-size", "64",
        "--eval-subset", "64", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding a generated ``cifar-100-python.tar.gz`` (320 train, 100 test images)."""
    return built_once(tmp_path_factory, "data",
                      lambda root: write_cifar_archive(root / "cifar-100-python.tar.gz", n_train=320, n_test=100))


def serve_app_from(monkeypatch: pytest.MonkeyPatch, checkpoints: Path, data: Path, **env: str) -> None:
    """The environment ``streamlit run app.py`` has on a server: checkpoints and data folders, the project."""
    for name, value in {"EFFNET_CHECKPOINTS": checkpoints, "EFFNET_DATA": data, "PYTHONPATH": TEST_PATH, **env}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.chdir(PROJECT)


def open_app(page: str | None = None, timeout: float = 120, owner: str | None = None, **query: str):
    """The lab's pages under Streamlit's AppTest (``lab.py``, what ``app.py`` serves), switched to ``page`` when
    given. ``owner``: the browser's owner token (on a real server it comes from its signed cookie)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PROJECT / "lab.py"), default_timeout=scaled(timeout))
    at.query_params.update(query)
    if owner is not None:
        at.session_state["owner"] = owner
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at


def tiny_config(cifar_dir: Path, **changes: object) -> TrainConfig:
    """The queue's version of TINY: a one-epoch run of the smallest spec on the generated archive."""
    base = dict(spec=ScalingSpec(phi=-4), epochs=1, batch_size=32, lr=0.05, val_size=64, eval_subset=64,
                device="cpu", data_dir=str(cifar_dir))
    return TrainConfig(**{**base, **changes})


def python_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": TEST_PATH, "PYTHONUNBUFFERED": "1", **extra}


def train_cmd(out: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "effnet.train", *TINY, "--data-dir", str(data), "--out", str(out), *extra]


def run_train(out: Path, data: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(out, data, *extra), capture_output=True, text=True, timeout=scaled(timeout),
                          cwd=PROJECT, env=python_env())


def wait_for(predicate: Callable[[], object], timeout: float = 120, what: str = "condition") -> object:
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {scaled(timeout):.0f} s waiting for {what}")


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(checkpoints: Path, cifar_dir: Path, logs: Path, **extra: str) -> Iterator[str]:
    """``streamlit run app.py`` on a free loopback port over ``checkpoints``; yields its URL, stops it after."""
    port = free_port()
    log_path = logs / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 (a file, not a pipe: an unread pipe would block the server)
    env = {**python_env(), "EFFNET_CHECKPOINTS": str(checkpoints), "EFFNET_DATA": str(cifar_dir), **extra}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + scaled(60)
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("streamlit did not start: " + log_path.read_text(errors="replace")[-2000:]) from exc
            time.sleep(0.3)
    try:
        yield url
    finally:  # also when the test failed inside ``for url in serve(...)``: the server never outlives it
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
@shared
def finished_runs(tmp_path_factory: pytest.TempPathFactory, cifar_dir: Path) -> Path:
    """A checkpoints folder with two finished tiny runs, for the results and CAM pages."""
    def build(root: Path) -> None:
        for name, phi in (("tiny-a", "-4"), ("tiny-b", "-3.5")):
            done = run_train(root / name, cifar_dir, "--epochs", "2", "--phi", phi)
            assert done.returncode == 0, done.stderr

    return built_once(tmp_path_factory, "finished", build)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real two-node Slurm cluster (tests/slurm_cluster.py), started for the session and stopped after it; its
    folder (for faults) is the one holding SLURM_CONF."""
    import slurm_cluster as cluster

    why = cluster.available()
    if why is not None:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("slurm")
    env = cluster.start_cluster(folder)
    yield env
    cluster.stop_cluster(folder)


STUDY_TRAIN = ["--epochs", "1", "--batch-size", "32", "--subset", "96", "--val-size", "64", "--eval-subset", "64",
               "--device", "cpu", "--lr", "0.05"]


def cli(module: str, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the project folder, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=scaled(timeout), cwd=PROJECT, env=python_env(**env))


@pytest.fixture(scope="session")
@shared
def methods_study(tmp_path_factory: pytest.TempPathFactory, cifar_dir: Path) -> tuple[Path, Path]:
    """(checkpoints folder, study folder): a real methods study at phi=-2, its four runs one epoch each."""
    def build(root: Path) -> None:
        done = cli("effnet.study", "methods", "--phi", "-2", *STUDY_TRAIN, "--data-dir", str(cifar_dir), "--out",
                   str(root / "studies" / "methods"), "--checkpoints", str(root), "--wait")
        assert done.returncode == 0, done.stderr

    root = built_once(tmp_path_factory, "study", build)
    return root, root / "studies" / "methods"
