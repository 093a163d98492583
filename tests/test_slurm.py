"""The Slurm backend on a real one-node cluster (tests/slurm_cluster.py): nothing of Slurm is mocked.

Jobs ask for CPUs only (EFFNET_SLURM_GPUS=0: the test node has no GPU), and the runs are the tiniest there are.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import STUDY_TRAIN, cli, open_app, run_train, scaled, serve_app_from, tiny_config, wait_for

from effnet.analysis import results
from effnet.base import files
from effnet.experiments import study
from effnet.queue import jobs, slurm
from effnet.training import runs
from effnet.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture
def on_slurm(slurm_cluster, monkeypatch, tmp_path):
    """The queue's Slurm backend over a fresh checkpoints folder; yields the folder."""
    for name, value in {**slurm_cluster, "EFFNET_BACKEND": "slurm", "EFFNET_SLURM_GPUS": "0",
                        "EFFNET_SLURM_CPUS": "1", "EFFNET_SLURM_SIGNAL_S": "20", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "checkpoints"
    root.mkdir()
    scancel = shutil.which("scancel")  # a test may hide Slurm's commands from PATH
    yield root
    subprocess.run([scancel, "--name", slurm.JOB_NAME], capture_output=True)


def squeue(*args: str) -> str:
    return subprocess.run(["squeue", "-h", "-r", "-t", "all", *args], capture_output=True, text=True).stdout


def until(root, run_id: str, predicate, timeout: float = 240, what: str = "the run") -> runs.RunInfo:
    """Wait as a page would: each look merges Slurm's news (``jobs.heal``) before reading the run."""
    def look():
        jobs.heal(root)
        info = runs.read_run(root / run_id)
        return info if predicate(info) else None

    return wait_for(look, timeout=timeout, what=what)


def test_a_run_trains_as_a_slurm_job_and_appears_in_results(on_slurm, cifar_dir):
    run_id = jobs.submit(tiny_config(cifar_dir), on_slurm)
    job = runs.read_run(on_slurm / run_id).status["slurm_job_id"]
    assert job in squeue("-o", "%i")
    info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, what="the Slurm job to finish")
    assert info.state == "finished", info.error
    assert slurm.detail(info.status).startswith(f"Slurm job {job}")
    assert [r.run_id for r in results.gather(on_slurm).results] == [run_id]
    script = next((on_slurm / slurm.FOLDER).glob("*/job.sbatch")).read_text()
    assert "--requeue" in script and "--signal=B:USR1@" in script and "--cpus-per-task=1" in script


def test_stop_checkpoints_and_resume_continues_in_a_new_job(on_slurm, cifar_dir):
    run_id = jobs.submit(tiny_config(cifar_dir, epochs=3, checkpoint_minutes=0), on_slurm)
    first = runs.read_run(on_slurm / run_id).status["slurm_job_id"]
    until(on_slurm, run_id, lambda i: i.state == "running" and i.status.get("step", 0) >= 2, what="training")
    assert jobs.stop(run_id, on_slurm) == "stopping"
    info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, what="the stop")
    assert info.state == "stopped" and jobs.resumable(info)
    jobs.resume(run_id, on_slurm)
    again = runs.read_run(on_slurm / run_id).status["slurm_job_id"]
    assert again != first
    info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, what="the resumed job")
    assert info.state == "finished" and [r["epoch"] for r in runs.load_metrics(info.path)] == [1, 2, 3]


def test_a_requeued_job_resumes_and_ends_bitwise_like_an_uninterrupted_run(on_slurm, cifar_dir, tmp_path):
    """A preemption as Slurm does it (``scontrol requeue``: SIGTERM, then the job queued again)."""
    run_id = jobs.submit(tiny_config(cifar_dir, epochs=2, checkpoint_minutes=0), on_slurm)
    job = runs.read_run(on_slurm / run_id).status["slurm_job_id"]
    until(on_slurm, run_id, lambda i: i.state == "running" and i.status.get("step", 0) >= 3, what="training")
    subprocess.run(["scontrol", "requeue", job], check=True)
    until(on_slurm, run_id, lambda i: i.state == "queued" and "requeued" in str(i.status.get("slurm_reason")),
          what="the requeue to show")
    # Slurm holds a requeued job back for about two minutes; lift that once the job is really pending again (an
    # update sent while it is still completing has no effect, and the test waited those minutes).
    wait_for(lambda: squeue("-j", job, "-o", "%T").strip() == "PENDING", what="the job to be pending again")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, timeout=300, what="the requeued job")
    assert info.state == "finished", (info.error, info.status)
    assert [r["epoch"] for r in runs.load_metrics(info.path)] == [1, 2]
    done = run_train(tmp_path / "straight", cifar_dir, "--epochs", "2", "--checkpoint-minutes", "0")
    assert done.returncode == 0, done.stderr
    ours, straight = load_checkpoint(info.path / runs.LAST)["model"], load_checkpoint(tmp_path / "straight" /
                                                                                       runs.LAST)["model"]
    assert all(torch.equal(ours[k], straight[k]) for k in straight)


def test_a_killed_job_fails_with_slurms_reason_and_a_vanished_one_is_never_left_running(on_slurm, cifar_dir):
    run_id = jobs.submit(tiny_config(cifar_dir, epochs=3), on_slurm)
    job = runs.read_run(on_slurm / run_id).status["slurm_job_id"]
    until(on_slurm, run_id, lambda i: i.state == "running", what="training")
    subprocess.run(["scancel", "--full", "--signal=KILL", job], check=True)  # no chance to checkpoint or say so
    info = until(on_slurm, run_id, lambda i: i.state == "failed", what="the failure")
    assert "Slurm ended the job" in info.error, info.error
    ghost = on_slurm / "ghost"
    ghost.mkdir()
    files.write_json(ghost / runs.JOB, {"config": tiny_config(cifar_dir).to_dict(), "queued_at": 1, "generation": 1})
    files.write_json(ghost / runs.STATUS, {"state": "running", "slurm_job_id": "987654", "pid": 1, "heartbeat": 1.0})
    slurm.sync(on_slurm)
    info = runs.read_run(ghost)
    assert info.state == "failed" and "gone without an end" in info.error


def test_a_distributed_run_is_one_job_of_two_tasks(on_slurm, cifar_dir, monkeypatch):
    monkeypatch.setenv("EFFNET_SLURM_TASKS", "2")
    run_id = jobs.submit(tiny_config(cifar_dir), on_slurm, distributed=True)
    info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, timeout=300, what="the DDP job")
    assert info.state == "finished", info.error
    assert (files.read_json(info.path / runs.CONFIG) or {})["world_size"] == 2


def test_slurm_down_or_missing_is_said_where_start_was_pressed_and_nothing_is_written(on_slurm, cifar_dir,
                                                                                      monkeypatch, tmp_path):
    broken = tmp_path / "broken.conf"
    conf = pathlib.Path(os.environ["SLURM_CONF"]).read_text()
    broken.write_text(conf.replace("SlurmctldPort=", "SlurmctldPort=1"))
    monkeypatch.setenv("SLURM_CONF", str(broken))  # a controller that does not answer
    with pytest.raises(slurm.SlurmError, match="Slurm refused sinfo"):
        jobs.submit(tiny_config(cifar_dir), on_slurm)
    assert runs.list_runs(on_slurm) == []
    serve_app_from(monkeypatch, on_slurm, cifar_dir, EFFNET_BACKEND="slurm")
    at = open_app("views/train.py")
    assert any("Slurm" in w.value and "not" in w.value for w in at.warning), [w.value for w in at.warning]
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm commands at all
    with pytest.raises(slurm.SlurmError, match="not installed here"):
        jobs.submit(tiny_config(cifar_dir), on_slurm)


def test_the_train_page_starts_a_slurm_run_and_shows_its_job(on_slurm, cifar_dir, monkeypatch):
    serve_app_from(monkeypatch, on_slurm, cifar_dir, EFFNET_BACKEND="slurm")
    at = open_app("views/train.py")
    assert any("Slurm" in i.value for i in at.info), "the page says where runs train"
    for key, value in {"t_c_phi": -4.0, "t_epochs": 1, "t_subset": 96, "t_eval_subset": 32, "t_val_size": 64,
                       "t_batch": 32, "t_device": "cpu"}.items():
        at.session_state[key] = value
    at.session_state["t_custom"], at.session_state["t_variants"] = True, []
    at.run()
    next(b for b in at.button if b.label == "Start").click().run()
    assert any("Queued 1 run" in s.value for s in at.success), [e.value for e in at.error]
    (run_id,) = [r.run_id for r in runs.list_runs(on_slurm)]
    info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, what="the app's Slurm run")
    assert info.state == "finished"


def test_a_methods_study_from_the_command_line_is_a_job_array(on_slurm, cifar_dir):
    out = on_slurm / "studies" / "methods"
    done = cli("effnet.study", "methods", "--phi", "-2", *STUDY_TRAIN, "--data-dir", str(cifar_dir), "--out",
               str(out), "--checkpoints", str(on_slurm), "--wait", timeout=900)
    assert done.returncode == 0, done.stderr
    loaded = study.load(out, on_slurm)
    ids = {r.info.status["slurm_job_id"].split("_")[0] for r in loaded.runs}
    assert len(ids) == 1 and all(r.state == "finished" for r in loaded.runs)  # one array, four tasks
    assert len(results.gather(on_slurm).results) == 4
    assert sys.executable in next((on_slurm / slurm.FOLDER).glob("*/job.sbatch")).read_text()
    assert scaled(1) >= 1
