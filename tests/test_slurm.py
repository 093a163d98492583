"""The Slurm backend on a real two-node cluster (tests/slurm_cluster.py): nothing of Slurm is mocked.

The nodes have one CPU and no GPU each; runs ask for the defaults, which fit them (no GPU where the partition has
none, CPUs up to what a node has). The checkpoints folder has a space in its path, as a user's home may. Faults are
real: a node set down, a slurmd killed with its job, the controller stopped, a distributed run losing a node.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import slurm_cluster as cluster
import torch
from conftest import (
    PROJECT,
    STUDY_TRAIN,
    cli,
    open_app,
    python_env,
    run_train,
    scaled,
    serve_app_from,
    tiny_config,
    train_cmd,
    wait_for,
)

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
    for name, value in {**slurm_cluster, "EFFNET_BACKEND": "slurm", "EFFNET_SLURM_SIGNAL_S": "20",
                        "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith("EFFNET_SLURM_") and n != "EFFNET_SLURM_SIGNAL_S"]:
        monkeypatch.delenv(name)
    root = tmp_path / "check points 100%"  # sbatch's --output must carry a space and its pattern character
    root.mkdir()
    scancel, scontrol = shutil.which("scancel"), shutil.which("scontrol")  # a test may hide Slurm from PATH
    yield root
    subprocess.run([scancel, "--name", slurm.JOB_NAME], capture_output=True)
    for node in cluster.NODES:  # a fault test that failed half-way leaves the next test a whole cluster
        subprocess.run([scontrol, "update", f"nodename={node}", "state=resume"], capture_output=True)


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
    assert "--requeue" in script and "--signal=B:USR1@" in script
    assert "--cpus-per-task=1" in script and "--gpus" not in script, "the defaults fit a 1-CPU node without GPUs"
    assert list((on_slurm / slurm.FOLDER).glob(f"*/slurm-{job}.out")), "Slurm's output lands in the batch folder"


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


def test_slurm_down_or_missing_is_said_where_start_was_pressed_and_nothing_is_written(on_slurm, cifar_dir,
                                                                                      monkeypatch, tmp_path):
    broken = tmp_path / "broken.conf"
    conf = pathlib.Path(os.environ["SLURM_CONF"]).read_text()
    broken.write_text(conf.replace("SlurmctldPort=", "SlurmctldPort=1"))
    monkeypatch.setenv("SLURM_CONF", str(broken))  # a controller that does not answer
    with pytest.raises(slurm.SlurmError, match="Slurm refused"):
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


def folder() -> pathlib.Path:
    """The test cluster's own folder (its slurm.conf, pid files and logs)."""
    return pathlib.Path(os.environ["SLURM_CONF"]).parent


def nothing_written(root: pathlib.Path) -> bool:
    return runs.list_runs(root) == [] and not any((root / slurm.FOLDER).glob("*/job.sbatch"))


@pytest.mark.parametrize(("env", "refusal"), [
    ({"EFFNET_SLURM_CPUS": "4"}, "EFFNET_SLURM_CPUS: asks 4 CPUs per node; partition debug's largest node has 1: "
                                 "set EFFNET_SLURM_CPUS=1"),
    ({"EFFNET_SLURM_MEM": "64G"}, "EFFNET_SLURM_MEM: asks 64G per node; partition debug's largest node has 4000 MB"),
    ({"EFFNET_SLURM_GPUS": "1"}, "EFFNET_SLURM_GPUS: asks 1 GPU(s) per node; partition debug's largest node has 0: "
                                 "set EFFNET_SLURM_GPUS=0"),
    ({"EFFNET_SLURM_TIME": "120"}, "EFFNET_SLURM_TIME: asks 120 minutes; partition debug allows at most 60"),
    ({"EFFNET_SLURM_NODES": "3", "EFFNET_SLURM_TASKS": "1"}, "EFFNET_SLURM_NODES: asks 3 nodes; partition debug has "
                                                             "at most 2"),
    ({"EFFNET_SLURM_MEM": "64 GB"}, "EFFNET_SLURM_MEM: a size per node like 16G"),
    ({"EFFNET_SLURM_PARTITION": "debug\necho owned"}, "EFFNET_SLURM_PARTITION: must be a Slurm name"),
    ({"EFFNET_SLURM_PARTITION": "gpu"}, "this cluster has no partition 'gpu' (partitions: debug)"),
    ({"EFFNET_SLURM_SIGNAL_S": "-5"}, "EFFNET_SLURM_SIGNAL_S: must be 1 or more, got -5"),
    ({"EFFNET_SLURM_GPUS": "one"}, "EFFNET_SLURM_GPUS: must be a whole number, got 'one'"),
    ({"EFFNET_BACKEND": "slurmm"}, "EFFNET_BACKEND: must be one of local, slurm"),
])
def test_a_request_that_could_never_run_is_refused_at_submit_with_the_fix(on_slurm, cifar_dir, monkeypatch, env,
                                                                          refusal):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
        jobs.submit(tiny_config(cifar_dir), on_slurm, distributed="EFFNET_SLURM_NODES" in env)
    done = cli("effnet.jobs", "submit", "--phi", "-4", "--epochs", "1", "--data-dir", str(cifar_dir), "--root",
               str(on_slurm), *(["--distributed"] if "EFFNET_SLURM_NODES" in env else []), **env)
    assert done.returncode == 2 and refusal in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and nothing_written(on_slurm)
    if "EFFNET_SLURM_NODES" in env:
        return  # a distributed request: the page checks it when its box is ticked, as at Start
    serve_app_from(monkeypatch, on_slurm, cifar_dir)
    at = open_app("views/train.py")
    shown = [e.value.replace("\\", "") for e in at.error]  # the page escapes Markdown: text stays text
    assert not at.exception and any(refusal in e for e in shown), shown


def test_settings_reach_the_script_and_sbatchs_own_refusals_are_said_plainly(on_slurm, cifar_dir, monkeypatch):
    done = cli("effnet.slurm", "script", "--root", str(on_slurm), EFFNET_SLURM_MEM="1000M",
               EFFNET_SLURM_MAX_PARALLEL="2")
    assert done.returncode == 0 and "#SBATCH --mem=1000M" in done.stdout, done.stdout + done.stderr
    monkeypatch.setenv("EFFNET_SLURM_MAX_PARALLEL", "1")
    ids = jobs.submit_many([tiny_config(cifar_dir, epochs=1, subset=64)] * 2, on_slurm)
    script = next((on_slurm / slurm.FOLDER).glob("*/job.sbatch")).read_text()
    assert "#SBATCH --array=0-1%1" in script and f'--output="{str(on_slurm).replace("%", "%%")}/' in script
    for run_id in ids:
        jobs.stop(run_id, on_slurm)
    done = cli("effnet.jobs", "submit", "--phi", "-4", "--epochs", "1", "--subset", "64", "--data-dir",
               str(cifar_dir), "--root", str(on_slurm), "--label", "from the CLI")
    assert done.returncode == 0, done.stderr
    info = runs.read_run(on_slurm / done.stdout.strip())
    assert info.label == "from the CLI" and info.on_slurm
    jobs.stop(info.run_id, on_slurm)
    for run_id in [*ids, info.run_id]:  # ended before the folder goes: a trainer never writes into a vanishing one
        until(on_slurm, run_id, lambda i: i.state in runs.ENDED, what="the stop")
    shutil.rmtree(on_slurm)
    on_slurm.mkdir()
    monkeypatch.setenv("EFFNET_SLURM_EXTRA", "--gres=gpu:1")  # past the checks, to sbatch itself
    with pytest.raises(slurm.SlurmError, match="the partition has no GPUs .*set EFFNET_SLURM_GPUS=0"):
        jobs.submit(tiny_config(cifar_dir), on_slurm)
    assert nothing_written(on_slurm)
    monkeypatch.delenv("EFFNET_SLURM_EXTRA")
    quoted = on_slurm.parent / 'say "hi"'
    quoted.mkdir()
    with pytest.raises(ValueError, match="has a quote, a backslash or a line break"):
        jobs.submit(tiny_config(cifar_dir), quoted)
    assert nothing_written(quoted) and not any(quoted.iterdir())


def test_a_pending_reason_that_never_clears_is_said_with_its_fix(on_slurm, cifar_dir, monkeypatch):
    monkeypatch.setenv("EFFNET_SLURM_EXTRA", "--hold")
    monkeypatch.setenv("EFFNET_SLURM_TIME", "50")
    run_id = jobs.submit(tiny_config(cifar_dir), on_slurm)
    job = runs.read_run(on_slurm / run_id).status["slurm_job_id"]
    until(on_slurm, run_id, lambda i: "held" in str(slurm.detail(i.status)), what="the hold to show")
    # The administrator lowers the partition's limit under the job's: it can never start now (PartitionTimeLimit).
    subprocess.run(["scontrol", "update", "PartitionName=debug", "MaxTime=30"], check=True)
    try:
        subprocess.run(["scontrol", "release", job], check=True)
        info = until(on_slurm, run_id, lambda i: "PartitionTimeLimit" in str(i.status.get("slurm_reason")),
                     what="the reason to show")
        assert "lower EFFNET_SLURM_TIME" in slurm.detail(info.status)
        listed = cli("effnet.jobs", "list", "--root", str(on_slurm)).stdout
        assert "PartitionTimeLimit: its time limit is over the partition's" in listed, listed
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=debug", f"MaxTime={cluster.PARTITION_MAX_MINUTES}"])


def test_a_distributed_run_spans_two_nodes_stops_resumes_and_matches_ddp_on_one_machine(on_slurm, cifar_dir,
                                                                                        monkeypatch, tmp_path):
    """2 nodes x 1 task meet at the first node's NodeAddr (the names n1, n2 resolve nowhere), stop mid-run and resume
    in a new job, and end exactly as two processes on one machine do uninterrupted: bit for bit. (Against one process
    with the same global batch the weights differ by design: each process draws its own stochastic depth and
    normalises over its half of the batch; see README.)"""
    monkeypatch.setenv("EFFNET_SLURM_NODES", "2")
    monkeypatch.setenv("EFFNET_SLURM_TASKS", "1")
    run_id = jobs.submit(tiny_config(cifar_dir, epochs=2, batch_size=16, subset=128, checkpoint_minutes=0), on_slurm,
                         distributed=True)
    until(on_slurm, run_id, lambda i: i.state == "running" and i.status.get("step", 0) >= 1, what="both nodes training")
    assert jobs.stop(run_id, on_slurm) == "stopping"
    info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, what="the stop")
    assert info.state == "stopped", (info.error, info.status)
    jobs.resume(run_id, on_slurm)
    info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, timeout=300, what="the resumed 2-node job")
    assert info.state == "finished", info.error
    assert (files.read_json(info.path / runs.CONFIG) or {})["world_size"] == 2
    assert info.status["slurm_nodes"] == "n[1-2]"
    assert each_epoch_once(info) == [1, 2]
    here = tmp_path / "two-processes-here"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *train_cmd(here, cifar_dir, "--epochs", "2", "--batch-size", "16", "--subset", "128",
                                      "--checkpoint-minutes", "0")[1:]],
                          capture_output=True, text=True, cwd=PROJECT, env=python_env(OMP_NUM_THREADS="1"),
                          timeout=scaled(300))
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = (load_checkpoint(p / runs.LAST)["model"] for p in (info.path, here))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def release_when_pending(job: str) -> None:
    """Slurm holds a requeued job back for about two minutes; lift that once it is really pending again."""
    wait_for(lambda: squeue("-j", job, "-o", "%T").strip() == "PENDING", timeout=120, what=f"job {job} pending again")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def training_on_slurm(root, cifar_dir, distributed: bool = False) -> tuple[str, str, runs.RunInfo]:
    """A 3-epoch run that checkpoints every epoch, seen training (run id, job id, its info)."""
    run_id = jobs.submit(tiny_config(cifar_dir, epochs=3, checkpoint_minutes=0), root, distributed=distributed)
    info = until(root, run_id, lambda i: i.state == "running" and i.status.get("epoch", 0) >= 2, what="training")
    return run_id, info.status["slurm_job_id"], info


def each_epoch_once(info: runs.RunInfo) -> list[int]:
    return [r["epoch"] for r in runs.load_metrics(info.path)]


def test_a_node_set_down_mid_run_requeues_it_onto_the_other_node(on_slurm, cifar_dir):
    run_id, job, info = training_on_slurm(on_slurm, cifar_dir)
    first = info.status["node"]
    subprocess.run(["scontrol", "update", f"nodename={first}", "state=down", "reason=test-fault"], check=True)
    try:
        release_when_pending(job)
        info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, timeout=300, what="the requeued run")
    finally:
        subprocess.run(["scontrol", "update", f"nodename={first}", "state=resume"], check=True)
    assert info.state == "finished", (info.error, info.status)
    assert each_epoch_once(info) == [1, 2, 3] and info.status["slurm_requeues"] >= 1
    assert info.status["node"] != first, "it resumed on the node that is up"


def test_a_crashed_node_slurmd_and_job_killed_is_requeued_and_finishes(on_slurm, cifar_dir):
    run_id, job, info = training_on_slurm(on_slurm, cifar_dir)
    node = info.status["node"]
    cluster.kill_slurmd(folder(), node)  # the node dies with everything on it: its slurmd, the job's steps, the trainer
    subprocess.run(["pkill", "-KILL", "-f", f"slurmstepd: \\[{job}"], check=False)
    os.kill(int(info.status["pid"]), 9)
    try:
        release_when_pending(job)  # the controller notices the silent node (SlurmdTimeout) and requeues its job
        info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, timeout=300, what="the run after the crash")
        assert info.state == "finished", (info.error, info.status)
        assert each_epoch_once(info) == [1, 2, 3] and info.status["node"] != node
    finally:
        cluster.start_slurmd(folder(), {"SLURM_CONF": os.environ["SLURM_CONF"]}, node)
        cluster.wait_idle({"SLURM_CONF": os.environ["SLURM_CONF"]}, (node,), timeout=120)


def test_the_controller_stopped_and_started_marks_nothing_failed_and_picks_everything_up(on_slurm, cifar_dir,
                                                                                          monkeypatch):
    ids = jobs.submit_many([tiny_config(cifar_dir, epochs=2, checkpoint_minutes=0)] * 3, on_slurm)
    until(on_slurm, ids[0], lambda i: i.state == "running", what="the first run training")
    env = {"SLURM_CONF": os.environ["SLURM_CONF"]}
    cluster.stop_controller(folder())
    try:
        for _ in range(3):
            jobs.heal(on_slurm)
        assert not any(i.state == "failed" for i in runs.list_runs(on_slurm))
        listed = cli("effnet.jobs", "list", "--root", str(on_slurm))
        assert "Slurm is not answering" in listed.stderr and "failed" not in listed.stdout, listed
        serve_app_from(monkeypatch, on_slurm, cifar_dir)
        at = open_app("views/train.py")
        assert any("not answering" in w.value for w in at.warning), [w.value for w in at.warning]
    finally:
        cluster.start_controller(folder(), env)
    for run_id in ids:
        info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, timeout=300, what="every run after the outage")
        assert info.state == "finished", (info.error, info.status)
        assert each_epoch_once(info) == [1, 2]
    assert "Slurm is not answering" in (on_slurm / ".slurm-watcher.log").read_text()


def test_a_distributed_run_that_loses_a_node_waits_for_it_and_resumes(on_slurm, cifar_dir, monkeypatch):
    monkeypatch.setenv("EFFNET_SLURM_NODES", "2")
    monkeypatch.setenv("EFFNET_SLURM_TASKS", "1")
    run_id, job, _ = training_on_slurm(on_slurm, cifar_dir, distributed=True)
    subprocess.run(["scontrol", "update", "nodename=n2", "state=down", "reason=test-fault"], check=True)
    try:
        wait_for(lambda: squeue("-j", job, "-o", "%T").strip() == "PENDING", what="the job pending again")
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        # It needs both nodes: it waits, saying why in plain words, and never runs on one node alone.
        until(on_slurm, run_id, lambda i: i.state == "queued" and i.status.get("slurm_requeues")
              and "ReqNodeNotAvail: the nodes it needs are down" in str(slurm.detail(i.status)),
              what="the wait for the node, in plain words")
    finally:
        subprocess.run(["scontrol", "update", "nodename=n2", "state=resume"], check=True)
    info = until(on_slurm, run_id, lambda i: i.state in runs.ENDED, timeout=300, what="the resumed DDP run")
    assert info.state == "finished", (info.error, info.status)
    assert each_epoch_once(info) == [1, 2, 3] and info.status["slurm_nodes"] == "n[1-2]"
