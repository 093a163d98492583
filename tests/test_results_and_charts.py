"""Results bookkeeping and chart builders on real run files and real specs."""

import csv
import io
import time

import numpy as np
import pytest

from effnet import ScalingSpec, model_card
from effnet.analysis import results
from effnet.analysis.charts import network_picture, scaling_sweep, training_curves, val_vs_test
from effnet.base import files
from effnet.training import runs


def test_study_table_and_csv_round_trip(finished_runs):
    found = results.collect(finished_runs)
    assert [r.run_id for r in found] == ["tiny-a", "tiny-b"]
    columns, rows = results.study_table(found)
    assert columns == ["φ=-4 · 2 ep · all img", "φ=-3.5 · 2 ep · all img"]  # runs name what tells them apart
    parsed = list(csv.DictReader(io.StringIO(results.to_csv(columns, rows))))
    by_name = {row[""]: row for row in parsed}
    assert float(by_name["params (M)"][columns[0]]) == round(model_card(ScalingSpec(phi=-4)).params / 1e6, 2)
    selected = runs.selected_row(found[0].rows)
    assert float(by_name["test top-1 at the selected epoch (%)"][columns[0]]) == round(selected["test_top1"], 2)
    assert by_name["epochs"][columns[1]] == "2"


def test_confusion_views_add_up(finished_runs):
    confusion = results.load_confusion(finished_runs / "tiny-a", "final")
    total = sum(map(sum, confusion.matrix))
    assert total == 64 and sum(map(sum, confusion.coarse())) == total
    per_class = confusion.per_class()
    assert sum(n for _, _, n in per_class) == total
    assert [acc for _, acc, _ in per_class] == sorted((acc for _, acc, _ in per_class), reverse=True)
    names, grid = confusion.within(0)
    fine_rows = [i for i, c in enumerate(confusion.fine_to_coarse) if c == 0 and sum(confusion.matrix[i])]
    assert len(names) == len(fine_rows) < 5  # only the superclass's classes that have test images: no empty rows
    assert all(len(row) == len(names) + 1 for row in grid)  # + "elsewhere"
    assert sum(map(sum, grid)) == sum(sum(confusion.matrix[i]) for i in fine_rows)


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=20).tolist(), rng.normal(size=20).tolist()
    assert results.pearson(xs, ys) == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    assert results.pearson([1.0], [2.0]) is None and results.pearson([1.0, 1.0], [2.0, 3.0]) is None


def test_network_picture_changes_with_phi():
    small, large = (network_picture(model_card(ScalingSpec(phi=p))) for p in (0, 3))
    sizes = [[(s.x1 - s.x0, s.y1 - s.y0) for s in fig.layout.shapes] for fig in (small, large)]
    assert len(sizes[0]) == len(sizes[1]) == 9 and sizes[0] != sizes[1]


def test_sweep_charts_use_the_cards_and_skip_unbuildable_phi():
    spec = ScalingSpec(phi=1, beta=2.0)  # large phi would exceed the parameter limit
    fig = scaling_sweep(spec, "params")
    formula = fig.data[0]
    assert list(formula.y) == [model_card(ScalingSpec(phi=float(x), beta=2.0)).params for x in formula.x]
    assert len(formula.x) < 8 and fig.layout.yaxis.type == "log"
    official = fig.data[1]
    assert list(official.y) == [model_card(ScalingSpec.official(f"b{i}")).params for i in range(8)]


def test_curves_and_val_test_charts():
    rows = [{"epoch": 1, "train_top1": 5, "val_top1": 4, "test_top1": 3, "train_loss": 4.0, "val_loss": 4.1,
             "test_loss": 4.2}, {"epoch": 2, "train_top1": 9, "val_top1": 8, "test_top1": 7, "train_loss": 3.0,
                                  "val_loss": 3.1, "test_loss": 3.2}]
    fig = training_curves([("a", rows), ("b", rows)], "top1")
    assert len(fig.data) == 6 and list(fig.data[1].y) == [4, 8]
    loss = training_curves([("a", rows)], "loss")
    assert list(loss.data[0].y) == [4.0, 3.0]
    scatter = val_vs_test([("a", 1.0, 2.0), ("b", 3.0, 3.5)], 1.0)
    assert "r = 1.000" in scatter.layout.title.text


def test_progress_and_eta_from_status(tmp_path):
    """The ETA is the steps left at the measured pace plus one evaluation per epoch left; "estimating" until a step
    is timed, "≈" while the evaluation's cost is a guess."""
    run = tmp_path / "r"
    run.mkdir()
    now = time.time()
    base = {"state": "running", "pid": __import__("os").getpid(), "heartbeat": now, "epoch": 2, "epochs": 4,
            "step": 5, "steps": 10, "running_since": now - 100, "eval_images": 600, "step_images": 50}

    def shown(**status):
        files.write_json(run / runs.STATUS, {**base, **status})
        return runs.progress(runs.read_run(run))

    progress = shown()
    assert progress.fraction == pytest.approx(1.5 / 4) and progress.eta_s is None
    assert "epoch 2/4" in progress.text and "step 5/10" in progress.text and "ETA estimating" in progress.text
    progress = shown(step_s=2.0)  # evaluation not timed: 600 images at a third of a 50-image step's 2 s = 8 s
    assert progress.eta_s == pytest.approx(2 * (10 * 2 + 8) + 5 * 2 + 8) and "ETA ≈ 1 min 14 s" in progress.text
    progress = shown(step_s=2.0, eval_s=10.0)  # timed: two epochs of 10 steps and an evaluation, then this one's rest
    assert progress.eta_s == pytest.approx(2 * (10 * 2 + 10) + 5 * 2 + 10) and "ETA 1 min 20 s" in progress.text
    progress = shown(step_s=2.0, eval_s=10.0, step=10, phase="evaluating", eval_started=now - 4, epoch=4)
    assert progress.eta_s == pytest.approx(6, abs=0.5) and "evaluating" in progress.text  # the last one, 4 s in
