"""Honest numbers, a package that installs, defaults that work on your own images (the review of 81cade5).

Each test here failed on 81cade5, where "best epoch" meant the best of the test set, the wheel lacked
effnet.runs, a 100-image folder could not train by default, and three rules decided whether a model fits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import PROJECT, open_app, python_env, serve_app_from
from fake_runs import fake_run, row

from effnet.analysis import results
from effnet.arch.card import model_card
from effnet.arch.scaling import ScalingSpec
from effnet.base import files
from effnet.experiments import study
from effnet.training import runs
from effnet.training.config import TrainConfig
from effnet.training.devices import MEMORY_SHARE, check_memory, ram_bytes
from views.widgets import plain


# ----------------------------------------------------------------------------- 1. a package that installs
@pytest.mark.slow
def test_the_wheel_holds_every_module_and_declares_every_import(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(PROJECT)], capture_output=True, text=True, env=python_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    wheel = next(tmp_path.glob("effnet_lab-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = Parser().parsestr(zf.read(next(n for n in names if n.endswith("METADATA"))).decode())
    modules = {str(p.relative_to(PROJECT)) for p in (PROJECT / "effnet").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    declared = {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for r in metadata.get_all("Requires-Dist") if "extra ==" not in r}
    # Every third-party package the library imports, anywhere in it, is a declared dependency.
    from importlib.metadata import packages_distributions

    import_to_dist = {k: {d.lower() for d in v} for k, v in packages_distributions().items()}
    used = set()
    for path in (PROJECT / "effnet").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                used.add(words[1].split(".")[0].rstrip(","))
    third_party = {m for m in used if m in import_to_dist and m != "effnet"}
    missing = {m for m in third_party if not import_to_dist[m] & declared}
    assert not missing, f"imported but not declared in pyproject: {sorted(missing)}"


# ----------------------------------------------------------------------------- 2. one rule for the selected epoch
def two_epochs_that_disagree(root: Path) -> Path:
    """Epoch 1 has the best test top-1 (60), epoch 2 the best validation (55, test 58): the honest number is 58."""
    return fake_run(root, "disagree", [row(1, val=50.0, test=60.0), row(2, val=55.0, test=58.0)])


def test_table_1_reports_test_at_the_best_validation_epoch_and_labels_the_seeds_columns(tmp_path):
    two_epochs_that_disagree(tmp_path)
    found = results.collect(tmp_path)
    columns, table = results.study_table(found)
    by_name = {r[""]: r[columns[0]] for r in table}
    assert by_name[results.SELECTED_EPOCH] == 2
    assert by_name["test top-1 at the selected epoch (%)"] == 58.0
    assert by_name["val top-1 at the selected epoch (%)"] == 55.0
    assert by_name["seed's columns: test top-1, best of all epochs (%)"] == 60.0  # kept, and named for what it is


def test_without_a_validation_split_the_last_epoch_is_reported_and_the_page_says_so(tmp_path, monkeypatch, cifar_dir):
    fake_run(tmp_path, "no-val", [row(1, val=None, test=61.0), row(2, val=None, test=57.0)], val_size=0)
    assert results.collect(tmp_path)[0].at_selected("test_top1") == 57.0
    serve_app_from(monkeypatch, tmp_path, cifar_dir)
    at = open_app("views/results.py")
    assert any("no validation split, so their selected epoch is their last one" in i.value for i in at.info)


def chart_points(at, key: str) -> list[float]:
    """The y values of the runs' points in a page's chart ``key``."""
    chart = next(c for c in at.get("plotly_chart") if json.loads(c.proto.spec)["layout"].get("title", {}).get(
        "text", "").startswith(key))
    return [y for trace in json.loads(chart.proto.spec)["data"] if trace.get("name") in ("runs", "EfficientNet")
            for y in trace["y"]]


def test_the_results_charts_and_the_lesson_show_the_selected_epoch(tmp_path, monkeypatch, cifar_dir):
    two_epochs_that_disagree(tmp_path)
    serve_app_from(monkeypatch, tmp_path, cifar_dir)
    at = open_app("views/results.py")
    assert chart_points(at, "Accuracy vs parameters") == [58.0]
    assert chart_points(at, "Validation vs test") == [58.0]
    lesson = open_app("views/lesson.py")
    shown = [d.value for d in lesson.dataframe if "test top-1 (%)" in d.value.columns]  # "Your runs": a row per run
    assert any(58.0 in frame.to_numpy() for frame in shown) and not any(60.0 in f.to_numpy() for f in shown)


def test_a_studys_numbers_come_from_the_selected_epoch(tmp_path):
    run_dir = two_epochs_that_disagree(tmp_path)
    loaded = study.StudyRun({"run": str(run_dir)}, runs.read_run(run_dir), runs.load_metrics(run_dir))
    assert (loaded.best_val, loaded.test_at_best_val) == (55.0, 58.0)


@pytest.mark.slow
def test_best_pt_is_the_last_epoch_without_a_validation_split(tmp_path, cifar_dir):
    from conftest import run_train

    from effnet.training.checkpoint import load_checkpoint

    done = run_train(tmp_path / "run", cifar_dir, "--epochs", "2", "--val-size", "0")
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 2  # never the epoch with the best test top-1


# ----------------------------------------------------------------------------- 3. own images with the defaults
@pytest.mark.slow
def test_a_small_folder_trains_with_the_default_validation_split(tmp_path):
    from conftest import cli
    from test_own_data import write_digits

    folder = write_digits(tmp_path / "photos", per_class=12)  # 120 images: 96 to train, 24 to test
    done = cli("effnet.train", "--dataset", "folder", "--data-dir", str(folder), "--phi", "-4", "--epochs", "1",
               "--batch-size", "16", "--device", "cpu", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    held = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["val_size"]
    assert held is None and len(runs.load_metrics(tmp_path / "run")) == 1


def test_a_split_too_large_is_refused_with_the_fix(tmp_path):
    from effnet.training.config import val_count

    with pytest.raises(ValueError, match=r"give --val-size 9 \(or 0"):
        val_count(TrainConfig(val_size=200, dataset="folder"), 96)


def test_the_cpu_time_check_counts_the_folders_own_images(tmp_path, monkeypatch):
    from test_own_data import write_digits

    from effnet.queue import jobs

    folder = write_digits(tmp_path / "photos", per_class=12)
    config = TrainConfig(spec=ScalingSpec(phi=-3), dataset="folder", data_dir=str(folder))
    from effnet.data.folder import split_sizes

    n_train = split_sizes(folder)[0]  # 122 files (two are not images) less a fifth of each class for testing
    assert n_train == 100 and jobs.training_images(config) == 90  # less a tenth held out for validation
    assert jobs.training_images(TrainConfig(data_dir=str(tmp_path / "none"))) == 45_000  # CIFAR-100 as published


# ----------------------------------------------------------------------------- 4. captions stay with their model
def test_study_captions_name_the_model_they_show_while_a_run_has_no_checkpoint(tmp_path, monkeypatch, cifar_dir):
    rows, spec_of = [], {}
    for planned in study.methods_plan(ScalingSpec(phi=-2)):
        method, spec = planned["method"], planned["spec"]
        run_dir = fake_run(tmp_path, method, [row(1, 20.0, 21.0)], spec=spec, weights=method != "compound")
        rows.append({"run": f"../../{run_dir.name}", "macs": model_card(spec).macs, "params": 1, "method": method,
                     "phi": -2.0})
        spec_of[method] = spec
    (tmp_path / "studies" / "s1").mkdir(parents=True)
    files.write_json(tmp_path / "studies" / "s1" / "study.json", {"kind": "methods", "runs": rows})
    serve_app_from(monkeypatch, tmp_path, cifar_dir)
    at = open_app("views/study.py")
    captions = [c.value for c in at.caption]
    compound = runs.read_run(tmp_path / "compound").label
    assert any(c.startswith(plain(compound)) and "no checkpoint yet" in c for c in captions), captions
    shown = [img.caption for i in at.get("image") for img in i.proto.imgs]
    for method in ("depth", "width", "resolution"):  # each map captioned with its own method's cost
        spec = spec_of[method]
        label = f"{method} only ({model_card(spec).macs / 1e6:,.0f} M MACs)"
        assert any(str(c).startswith(plain(label)) for c in shown), (label, shown)


# ----------------------------------------------------------------------------- 5. one rule for "fits in memory"
def too_big_for_this_machine() -> tuple[ScalingSpec, int]:
    """A spec and batch whose training needs more than MEMORY_SHARE of the RAM but less than all of it."""
    card = model_card(ScalingSpec.official("b0"))
    for batch in range(64, 1 << 20, 64):
        need = card.train_memory_bytes(batch)
        if need > MEMORY_SHARE * ram_bytes():
            assert need < ram_bytes()
            return card.spec, batch
    raise AssertionError("no batch crosses the line")


@pytest.mark.slow
def test_explorer_queue_and_measure_refuse_by_the_same_rule(tmp_path, monkeypatch, cifar_dir):
    from effnet.queue import jobs
    from effnet.training.measure import measure_speed

    spec, batch = too_big_for_this_machine()
    with pytest.raises(ValueError) as rule:
        check_memory(model_card(spec), batch, "cpu")
    with pytest.raises(ValueError) as queue:
        jobs.check_fits(TrainConfig(spec=spec, batch_size=batch, device="cpu"))
    with pytest.raises(ValueError) as measure:
        measure_speed(spec, batch)
    assert str(rule.value) == str(queue.value) == str(measure.value)
    serve_app_from(monkeypatch, tmp_path, cifar_dir)
    at = open_app("views/explorer.py")
    at.number_input(key="batch").set_value(batch).run()
    assert any(str(rule.value).split(": ", 1)[1] in w.value for w in at.warning)


# ----------------------------------------------------------------------------- 6. labels that tell runs apart
def test_labels_name_the_dataset_and_the_starting_point(tmp_path):
    source = fake_run(tmp_path, "leaves-run", [row(1, 50.0, 50.0)], dataset="folder", data_dir="/data/own/leaves")
    files.write_json(source / runs.LABEL, {"label": "B0 on leaves"})
    spec = ScalingSpec.official("b0")
    scratch = runs.describe(spec, TrainConfig(spec=spec))
    tuned = runs.describe(spec, TrainConfig(spec=spec, dataset="folder", data_dir="/data/own/leaves",
                                            init_from=str(source)))
    assert scratch == "B0 · 3 ep · all img"
    assert tuned == "B0 · 3 ep · all img · leaves · from B0 on leaves"


# ----------------------------------------------------------------------------- 8. reading and holding less
def bytes_read(fn) -> tuple[object, int]:
    def rchar() -> int:
        return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                        if line.startswith("rchar")).split()[1])

    before = rchar()
    value = fn()
    return value, rchar() - before


def test_the_log_tail_reads_only_the_tail(tmp_path):
    log = tmp_path / runs.LOG
    with open(log, "wb") as f:
        f.truncate(200 * 1024**2)  # 200 MB of a log (sparse: quick to make)
        f.seek(0, 2)
        f.write(b"\nthe last line\n")
    tail, read = bytes_read(lambda: runs.log_tail(tmp_path))
    assert tail.endswith("the last line") and read < 1024**2, read


# ----------------------------------------------------------------------------- 9. one validation layer
@pytest.mark.parametrize("name, text, field", [
    ("status.json", '{"state": "running", "heartbeat": NaN}', "NaN is not a JSON number"),
    ("status.json", '{"state": "running", "epoch": true}', "epoch"),
    ("confusion.json", '{"final": {"epoch": 1, "matrix": [[true, 0], [0, 1]]}}', "final.matrix.0.0"),
    ("metrics.jsonl", '{"epoch": 1, "test_top1": NaN}\n', "metrics.jsonl: line 1 is not valid JSON"),
])
def test_every_run_file_refuses_nan_and_true_as_a_number(tmp_path, name, text, field):
    run_dir = fake_run(tmp_path, "r", [row(1, 50.0, 50.0)])
    (run_dir / name).write_text(text)
    from effnet.base.files import Damaged

    with pytest.raises(Damaged, match=field):
        {"status.json": runs.load_status, "confusion.json": runs.load_confusion_file,
         "metrics.jsonl": runs.load_metrics}[name](run_dir)


def test_study_and_compress_files_follow_the_same_rules(tmp_path):
    from effnet.base.files import Damaged
    from effnet.compression import compressions

    files.atomic_write_bytes(tmp_path / "study.json", b'{"kind": "grid", "runs": [{"run": "x", "macs": true, '
                                                      b'"params": 1, "alpha": 1, "beta": 1, "gamma": 1}]}')
    with pytest.raises(study.StudyError, match="macs"):
        study.load(tmp_path, tmp_path)
    files.atomic_write_bytes(tmp_path / "compress.json", b'{"variants": [{"name": "int8", "size_bytes": 1, '
                                                         b'"params": 1, "latency_ms_b1": 1, "latency_ms_b32": 1, '
                                                         b'"test_top1": NaN}]}')
    with pytest.raises(Damaged, match="not valid JSON"):
        compressions.load_result(tmp_path)


# ----------------------------------------------------------------------------- 10. the bundle command, two names
@pytest.mark.slow
def test_the_bundle_command_answers_under_both_names(tmp_path):
    from conftest import cli

    run_dir = fake_run(tmp_path / "checkpoints", "r", [row(1, 50.0, 50.0)])
    for module in ("effnet.bundle", "effnet.runs"):
        out = tmp_path / f"{module}.zip"
        done = cli(module, "export", str(run_dir), str(out))
        assert done.returncode == 0 and out.is_file(), done.stderr


# ----------------------------------------------------------------------------- 11. no network in the tests
def test_no_test_reaches_the_network_in_process_or_in_a_subprocess():
    import urllib.request

    with pytest.raises(OSError, match="network access is off"):
        urllib.request.urlopen("http://example.com/", timeout=5)
    done = subprocess.run([sys.executable, "-c", "import urllib.request; urllib.request.urlopen('http://1.1.1.1/')"],
                          capture_output=True, text=True, env=python_env(), timeout=60)
    assert done.returncode != 0 and "network access is off" in done.stderr


# ----------------------------------------------------------------------------- 12. small things
def test_the_compress_page_offers_every_variant_for_download(tmp_path, monkeypatch, cifar_dir):
    run_dir = fake_run(tmp_path, "r", [row(1, 50.0, 50.0)], weights=True, job={"owner": "a" * 32})
    out = run_dir / "compressed" / "20261201-120000"
    variants = [{"name": n, "size_bytes": 10, "params": 5, "latency_ms_b1": 1.0, "latency_ms_b32": 2.0,
                 "test_top1": 50.0, "file": f"{n}.onnx"} for n in ("fp32", "fp32-onnx", "int8", "int8-qat",
                                                                    "pruned-0.1", "pruned-0.3", "pruned-0.5", "pruned-0.7")]
    out.mkdir(parents=True)
    for v in variants[1:]:
        files.atomic_write_bytes(out / v["file"], b"onnx")
    files.write_json(out / "compress.json", {"variants": variants})
    files.write_json(out / runs.STATUS, {"state": "finished"})
    serve_app_from(monkeypatch, tmp_path, cifar_dir)
    at = open_app("views/compress.py")
    links = {b.proto.label: b.proto.url for b in at.get("link_button")}
    assert len(links) == 8, links  # every variant, not the first six
    assert links[plain("fp32 (PyTorch .pt)")] == "/effnet/download/run/r/best.pt"  # the weights, not the ONNX again
    assert links[plain("fp32-onnx (.onnx)")] == "/effnet/download/run/r/compressed/20261201-120000/fp32-onnx.onnx"


def test_one_si_formatter_and_one_slug():
    from effnet.base.text import si, slug

    assert si(1_234_567) == "1.23 M" and si(1_500_000, decimals=None) == "1.5M" and si(12) == "12"
    assert slug("B0 · 3 ep · 2,000 img") == "b0-3-ep-2-000-img" and slug("···") == "run"
