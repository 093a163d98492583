"""The Colab/Kaggle notebook, end to end on the CPU under papermill with a real kernel: it trains, a second run
over the same checkpoints trains nothing new, and the bundle it writes imports into another install."""

import json
from pathlib import Path

import pytest
from conftest import cli, python_env

from effnet.training import runs

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "train_on_colab.ipynb"
pytestmark = pytest.mark.slow


def execute(out: Path, cwd: Path, **parameters: object) -> str:
    """Run the notebook with papermill; the text of every output, in order."""
    import papermill

    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=parameters, cwd=str(cwd), kernel_name="python3",
                               progress_bar=False, execution_timeout=600)
    notebook = json.loads(out.read_text())
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_the_notebook_trains_resumes_instead_of_retraining_and_its_bundle_imports(cifar_dir, tmp_path,
                                                                                   monkeypatch):
    for name, value in python_env().items():
        monkeypatch.setenv(name, value)  # the kernel and the queue's runner import this checkout
    checkpoints, bundle = tmp_path / "checkpoints", tmp_path / "effnet-runs.zip"
    parameters = dict(DATA_DIR=str(cifar_dir), CHECKPOINTS=str(checkpoints), STUDY="quick", VARIANTS=["b0"],
                      EPOCHS=1, BATCH_SIZE=16, SUBSET=64, EVAL_SUBSET=32, VAL_SIZE=32, DEVICE="cpu",
                      BUNDLE=str(bundle))
    first = execute(tmp_path / "first.ipynb", tmp_path, **parameters)
    assert "0 finished already, 0 resumed, 0 still queued or running, 1 new" in first
    [run] = runs.list_runs(checkpoints)
    assert run.state == "finished", run.error
    assert "CIFAR-100: 320 training and 100 test images" in first
    best = run.path / runs.BEST
    stamp = best.stat().st_mtime_ns

    second = execute(tmp_path / "second.ipynb", tmp_path, **parameters)
    assert "1 finished already, 0 resumed, 0 still queued or running, 0 new" in second
    assert [i.run_id for i in runs.list_runs(checkpoints)] == [run.run_id]
    assert best.stat().st_mtime_ns == stamp  # nothing trained again
    assert "test top-1" in second  # Table 1 shown inline

    imported = cli("effnet.runs", "import", str(bundle), "--checkpoints", str(tmp_path / "class"))
    assert imported.returncode == 0, imported.stderr
    [there] = runs.list_runs(tmp_path / "class")
    assert there.state == "finished" and runs.load_metrics(there.path) == runs.load_metrics(run.path)


def test_a_run_killed_with_its_kernel_is_resumed_not_restarted(cifar_dir, tmp_path, monkeypatch):
    """A notebook disconnect: the trainer dies mid-run; running the cells again resumes it from its checkpoint."""
    import os
    import signal

    from conftest import read_status, tiny_config, wait_for

    from effnet.queue import campaign

    for name, value in python_env().items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "checkpoints"
    config = tiny_config(cifar_dir, epochs=4)
    first = campaign.ensure([config], root)
    [run_id] = first.queued
    run_dir = root / run_id
    wait_for(lambda: (read_status(run_dir).get("epoch") or 0) >= 2 and (run_dir / runs.LAST).is_file(),
             what="the second epoch")
    os.kill(read_status(run_dir)["pid"], signal.SIGKILL)
    wait_for(lambda: runs.read_run(run_dir).state == "failed", what="the run to show as failed")
    again = campaign.ensure([config], root)
    assert again.resumed == [run_id] and again.queued == [] and again.ids == [run_id]
    [info] = campaign.wait(again.ids, root)
    assert info.state == "finished", info.error
    assert [r["epoch"] for r in runs.load_metrics(run_dir)] == [1, 2, 3, 4]  # each epoch once
