"""The job queue with real detached processes: ordering, one run at a time, stop/resume, dead runs."""

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import PROJECT, tiny_config, wait_for

from effnet import ScalingSpec
from effnet.base import files, locks
from effnet.queue import jobs
from effnet.training import runs
from effnet.training.devices import device_lock

# Trains models, starts processes or servers: the full suite's, not the edit loop's (-m 'not slow').
pytestmark = pytest.mark.slow


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(PROJECT))
    yield tmp_path / "checkpoints"
    for info in runs.list_runs(tmp_path / "checkpoints"):  # leave no training process behind
        if info.active:
            jobs.stop(info.run_id, tmp_path / "checkpoints")


def states(root: Path) -> dict[str, str]:
    return {r.run_id: r.state for r in runs.list_runs(root)}


def all_done(root: Path) -> bool:
    return all(s in ("finished", "failed", "stopped") for s in states(root).values())


def test_concurrent_submits_queue_in_order_and_train_one_at_a_time(root, cifar_dir):
    """Two 'Start' presses at the same moment (threads) plus a third: one runner, no overlap, FIFO."""
    ids: list[str] = []
    barrier = threading.Barrier(2)

    def press(label: str) -> None:
        barrier.wait()
        ids.append(jobs.submit(tiny_config(cifar_dir), root, label=label))

    threads = [threading.Thread(target=press, args=(f"press {i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids.append(jobs.submit(tiny_config(cifar_dir), root, label="third"))
    assert len(set(ids)) == 3
    wait_for(lambda: all_done(root), timeout=240, what="the queue to drain")
    infos = runs.list_runs(root)
    assert [i.state for i in infos] == ["finished"] * 3, [i.error for i in infos]
    spans = sorted((i.status["started"], i.status["ended"], i.run_id) for i in infos)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "two runs trained at the same time"
    queue_order = [i.run_id for i in infos]
    assert [s[2] for s in spans] == queue_order
    assert queue_order[-1] == ids[-1]
    wait_for(lambda: not _runner_alive(root), timeout=30, what="the runner to exit when the queue is empty")


def _runner_alive(root: Path) -> bool:
    return locks.is_held(root / jobs.RUNNER_LOCK)


def test_stop_running_then_resume_and_delete(root, cifar_dir):
    run_id = jobs.submit(tiny_config(cifar_dir, epochs=3, checkpoint_minutes=0), root)
    run_dir = root / run_id
    wait_for(lambda: runs.read_run(run_dir).status.get("step", 0) >= 2 and runs.read_run(run_dir).state == "running",
             timeout=120, what="the run to train")
    assert jobs.stop(run_id, root) == "stopping"
    wait_for(lambda: runs.read_run(run_dir).state == "stopped", timeout=30, what="the run to stop")
    assert (run_dir / runs.LAST).exists()
    jobs.resume(run_id, root)
    wait_for(lambda: runs.read_run(run_dir).state == "finished", timeout=240, what="the resumed run")
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1, 2, 3]
    assert json.loads((run_dir / runs.JOB).read_text())["resume"] is True
    jobs.delete(run_id, root)
    assert not run_dir.exists() and runs.list_runs(root) == []


def test_cancel_a_queued_run(root, cifar_dir):
    first = jobs.submit(tiny_config(cifar_dir, epochs=2), root)
    second = jobs.submit(tiny_config(cifar_dir), root)
    assert jobs.stop(second, root) == "stopped"
    wait_for(lambda: all_done(root), timeout=240, what="the queue")
    assert states(root) == {first: "finished", second: "stopped"}
    assert not (root / second / runs.LOG).exists()


def test_a_dead_run_is_reported_failed_with_its_log(root):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = root / "crashed"
    run_dir.mkdir(parents=True)
    files.write_json(run_dir / runs.STATUS, {"state": "running", "pid": dead.pid, "heartbeat": time.time()})
    (run_dir / runs.LOG).write_text("epoch 1/3 ...\nKilled\n")
    files.write_json(run_dir / runs.CONFIG, {"spec": ScalingSpec.official("b1").to_dict()})
    info = runs.read_run(run_dir)
    assert info.state == "failed" and "process is gone" in info.error and "Killed" in info.error
    assert info.label == "B1"
    # alive pid (ours) but silent for minutes: hung or a pid reused after a reboot
    files.write_json(run_dir / runs.STATUS, {"state": "running", "pid": os.getpid(), "heartbeat": time.time() - 600})
    assert runs.read_run(run_dir).state == "failed"
    # a run folder copied from another machine (or a wrong clock): a heartbeat in the future proves nothing
    files.write_json(run_dir / runs.STATUS, {"state": "running", "pid": os.getpid(), "heartbeat": time.time() + 3600})
    info = runs.read_run(run_dir)
    assert info.state == "failed" and "in the future" in info.error


def test_a_crashing_run_is_marked_failed_by_the_runner(root, tmp_path):
    run_id = jobs.submit(tiny_config(tmp_path / "no-data"), root)
    wait_for(lambda: all_done(root), timeout=120, what="the failing run")
    info = runs.read_run(root / run_id)
    assert info.state == "failed" and "CIFAR-100" in info.error


def test_submit_refuses_what_cannot_fit_or_is_invalid(root, cifar_dir):
    with pytest.raises(ValueError, match="^batch_size:.*GiB"):
        jobs.submit(tiny_config(cifar_dir, spec=ScalingSpec(phi=8, geometry="imagenet"), batch_size=4096),
                    root)
    with pytest.raises(ValueError, match="^epochs:"):
        jobs.submit(tiny_config(cifar_dir, epochs=0), root)
    assert not root.exists() or runs.list_runs(root) == []


def test_a_run_waits_while_another_process_holds_the_device(root, cifar_dir):
    """As if a killed runner had left a run training: the next run must wait for the device, not share it."""
    import fcntl

    root.mkdir(parents=True)
    with open(device_lock(root, "cpu"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        run_id = jobs.submit(tiny_config(cifar_dir), root)
        wait_for(lambda: runs.read_run(root / run_id).state == "waiting", timeout=60, what="the run to wait")
        time.sleep(2)
        assert runs.read_run(root / run_id).state == "waiting"
        fcntl.flock(held, fcntl.LOCK_UN)
    wait_for(lambda: runs.read_run(root / run_id).state == "finished", timeout=120, what="the run to finish")
