"""Your own images: class folders (scikit-learn's real handwritten digits written as PNGs, plus broken
files), zips of them, fine-tuning from a finished run, and what is refused."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import built_once, cli, open_app, serve_app_from, shared, wait_for
from PIL import Image

from effnet.arch.scaling import ScalingSpec
from effnet.base import files
from effnet.data.cifar import DataError
from effnet.data.folder import CACHE, NO_SUPERCLASS, load_folder, unpack_zip
from effnet.training import runs
from effnet.training.devices import cpu_locks
from effnet.training.start import weights_from_run

# Trains models, starts processes or servers: the full suite's, not the edit loop's (-m 'not slow').
pytestmark = pytest.mark.slow

DIGITS_TRAIN = ["--phi", "-3", "--epochs", "3", "--batch-size", "64", "--lr", "0.05", "--val-size", "200",
                "--augment", "none", "--device", "cpu"]


def write_digits(root: Path, per_class: int | None = None) -> Path:
    """scikit-learn's 8x8 handwritten digits as PNGs in digit-0 ... digit-9, plus two files that are not images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    counts: dict[int, int] = {}
    for i, (img, y) in enumerate(zip(d.images, d.target, strict=True)):
        if per_class is not None and counts.get(int(y), 0) >= per_class:
            continue
        counts[int(y)] = counts.get(int(y), 0) + 1
        folder = root / f"digit-{y}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 16).clip(0, 255).astype(np.uint8)).convert("RGB").save(folder / f"{i}.png")
    (root / "digit-3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "digit-5" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
@shared
def digits(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "digits", lambda root: write_digits(root / "digits")) / "digits"


@pytest.fixture(scope="session")
@shared
def digits_run(tmp_path_factory, digits) -> Path:
    def build(root: Path) -> None:
        done = cli("effnet.train", "--dataset", "folder", "--data-dir", str(digits), *DIGITS_TRAIN, "--out",
                   str(root / "digits-b"))
        assert done.returncode == 0, done.stderr

    return built_once(tmp_path_factory, "digits-run", build) / "digits-b"


def test_folder_training_learns_well_above_chance_and_keeps_the_class_names(digits_run):
    rows = runs.load_metrics(digits_run)
    assert rows[-1]["test_top1"] > 50, rows  # chance is 10%
    classes = runs.load_classes(digits_run)
    assert classes["fine"] == [f"digit-{i}" for i in range(10)] and classes["coarse"] == [NO_SUPERCLASS]
    spec, config = runs.load_config(digits_run)
    assert spec.num_classes == 10 and config.dataset == "folder"


def test_the_split_is_seeded_per_class_and_skips_what_is_not_an_image(digits):
    data, skipped = load_folder(digits, 16, seed=0)
    again, _ = load_folder(digits, 16, seed=0)  # from the cache now
    assert skipped == 2
    assert len(data.train) + len(data.test) == 1797
    assert torch.equal(data.test.images, again.test.images) and torch.equal(data.test.labels, again.test.labels)
    assert data.train.images.shape[1:] == (3, 16, 16) and data.train.images.dtype == torch.uint8
    per_class = torch.bincount(data.test.labels, minlength=10)
    assert per_class.min() >= 30  # about 20% of each class of about 180
    other, _ = load_folder(digits, 16, seed=1)
    assert not torch.equal(other.test.labels, data.test.labels) or not torch.equal(other.test.images, data.test.images)


def test_a_damaged_cache_is_rebuilt_not_trusted(tmp_path):
    folder = write_digits(tmp_path / "d", per_class=5)
    first, _ = load_folder(folder, 12)
    [cache] = (folder / CACHE).iterdir()
    cache.write_bytes(b"garbage")
    second, _ = load_folder(folder, 12)
    assert torch.equal(first.train.images, second.train.images)


def test_given_train_and_test_folders_are_used_as_they_are(tmp_path):
    src = write_digits(tmp_path / "src", per_class=6)
    root = tmp_path / "split"
    for part, take in (("train", slice(0, 4)), ("test", slice(4, 6))):
        for d in sorted(p for p in src.iterdir() if p.is_dir()):
            target = root / part / d.name
            target.mkdir(parents=True)
            for f in sorted(d.glob("*.png"))[take]:
                (target / f.name).write_bytes(f.read_bytes())
    data, _ = load_folder(root, 12)
    assert len(data.train) == 40 and len(data.test) == 20


@pytest.mark.parametrize("make, message", [
    (lambda root: (root / "only").mkdir(parents=True), "at least 2"),
    (lambda root: [(root / c).mkdir(parents=True) for c in ("a", "b")], "at least 2 readable images"),
])
def test_bad_folders_get_clear_errors(tmp_path, make, message):
    root = tmp_path / "bad"
    root.mkdir()
    make(root)
    with pytest.raises(DataError, match=message):
        load_folder(root, 16)


def test_cli_refuses_a_bad_folder_and_writes_no_run(tmp_path):
    root = tmp_path / "bad"
    (root / "a").mkdir(parents=True)
    done = cli("effnet.train", "--dataset", "folder", "--data-dir", str(root), *DIGITS_TRAIN, "--out",
               str(tmp_path / "run"))
    assert done.returncode != 0 and "class folder" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_zip_of_class_folders_unpacks_and_hostile_zips_leave_nothing(tmp_path, digits):
    members = {f"digits/{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(digits.glob("digit-[01]/*.png"))[:40]}
    members |= {f"digits/digit-1/{p.name}": p.read_bytes() for p in sorted(digits.glob("digit-1/*.png"))[:5]}
    added = unpack_zip(zipped(members), tmp_path / "data", "upload")  # one top folder: unwrapped
    assert sorted(p.name for p in added.folder.iterdir() if not p.name.startswith(".")) == ["digit-0", "digit-1"]
    for hostile, why in ((members | {"../escape.png": b"x"}, "outside"), ({"/abs.png": b"x"}, "outside"),
                         ({"just-one/a.png": members[next(iter(members))]}, "class folder"),
                         (b"not a zip at all", "not a zip")):
        with pytest.raises(DataError, match=why):
            unpack_zip(hostile if isinstance(hostile, bytes) else zipped(hostile), tmp_path / "data", "hostile")
        own = tmp_path / "data" / "own"
        assert not (own / "hostile").exists() and not (tmp_path / "escape.png").exists()
        assert not [p for p in own.iterdir() if p.name.startswith(".staging-") and p.is_dir()]


def test_init_from_copies_the_backbone_and_makes_a_new_classifier(digits_run):
    spec = runs.load_config(digits_run)[0]
    source, _ = runs.load_model(digits_run)
    model = weights_from_run(spec.replace(num_classes=4), digits_run)
    theirs, ours = source.state_dict(), model.state_dict()
    backbone = [k for k in ours if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    assert ours["classifier.1.weight"].shape[0] == 4
    with pytest.raises(ValueError, match="different backbone"):
        weights_from_run(ScalingSpec(phi=-2, num_classes=10), digits_run)


def test_init_from_on_the_command_line_fine_tunes_a_finished_run(tmp_path, digits, digits_run):
    out = tmp_path / "fine-tuned"
    done = cli("effnet.train", "--dataset", "folder", "--data-dir", str(digits), *DIGITS_TRAIN, "--epochs", "1",
               "--init-from", str(digits_run), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "tensors copied" in done.stdout
    # One more epoch from a 3-epoch start keeps what those epochs learned, and beats a first epoch from scratch.
    scratch = runs.load_metrics(digits_run)
    tuned = runs.load_metrics(out)[0]["test_top1"]
    assert tuned >= scratch[-1]["test_top1"] - 5 and tuned > scratch[0]["test_top1"] + 5
    assert json.loads((out / "config.json").read_text())["train"]["init_from"] == str(digits_run)
    bad = cli("effnet.train", "--dataset", "folder", "--data-dir", str(digits), *DIGITS_TRAIN, "--phi", "-2",
              "--init-from", str(digits_run), "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "same model" in bad.stderr and not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- compression
def test_compress_writes_every_variant_measured_on_the_same_images(tmp_path, digits_run):
    out = tmp_path / "compressed"
    done = cli("effnet.compress", str(digits_run), "--int8", "--qat-epochs", "1", "--prune", "0.3",
               "--finetune-epochs", "1", "--threads", "1", "--time-budget", "0.1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "compress.json").read_text())
    rows = {r["name"]: r for r in result["variants"]}
    assert set(rows) == {"fp32", "fp32-onnx", "int8", "int8-qat", "pruned-0.3"}
    for r in rows.values():
        assert r["size_bytes"] == (out / r["file"]).stat().st_size > 0
        assert r["latency_ms_b1"] > 0 and r["latency_ms_b32"] > 0 and 0 <= r["test_top1"] <= 100
    assert rows["int8"]["size_bytes"] < 0.35 * rows["fp32"]["size_bytes"]  # really int8 on disk
    assert rows["pruned-0.3"]["params"] < 0.7 * rows["fp32"]["params"]  # really fewer channels
    # fp32 in ORT is the same model: the same predictions on the same test images. Compression starts from best.pt,
    # the validation-selected epoch, which need not be the last one.
    selected = round(runs.selected_row(runs.load_metrics(digits_run))["test_top1"], 2)
    assert rows["fp32-onnx"]["test_top1"] == rows["fp32"]["test_top1"] == selected
    assert rows["int8"]["test_top1"] > 50  # measured, and still far above chance (10%)
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


def test_compress_refuses_what_it_cannot_do(tmp_path, digits_run):
    done = cli("effnet.compress", str(digits_run), "--prune", "1.5", "--out", str(tmp_path / "x"))
    assert done.returncode != 0 and "between 0 and 1" in done.stderr
    done = cli("effnet.compress", str(tmp_path), "--int8", "--out", str(tmp_path / "y"))
    assert done.returncode != 0 and "error:" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- in the app
def test_the_app_trains_on_an_added_dataset_and_compresses_the_run(tmp_path, monkeypatch, digits):
    """Train page: dataset chosen, run queued and finished with the folder's class names; Compress page: started,
    finished in the background, trade-off table shown. (Unpacking the uploaded zip is tested above.)"""
    data, root = tmp_path / "data", tmp_path / "checkpoints"
    members = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(digits.glob("digit-*/*.png"))}
    unpack_zip(zipped(members), data, "digits")
    serve_app_from(monkeypatch, root, data)
    at = open_app("views/train.py", timeout=180)
    at.button(key="preset_quick").click().run()
    at.selectbox(key="t_dataset").set_value("digits")
    at.selectbox(key="t_device").set_value("cpu")
    at.selectbox(key="t_augment").set_value("none")
    for key, value in {"t_epochs": 1, "t_subset": 0, "t_eval_subset": 0, "t_val_size": 200}.items():
        at.number_input(key=key).set_value(value)
    next(b for b in at.button if b.label == "Start").click().run()
    assert not at.exception and at.success, [e.value for e in at.error]
    [info] = runs.list_runs(root)
    assert info.config.dataset == "folder" and info.spec.num_classes == 10
    wait_for(lambda: runs.read_run(info.path).state in runs.ENDED, timeout=300, what="the run to end")
    assert runs.read_run(info.path).state == "finished", runs.read_run(info.path).error
    assert runs.load_classes(info.path)["fine"][3] == "digit-3"

    at.switch_page("views/compress.py").run()
    assert not at.exception
    at.multiselect(key="c_ratios").set_value([])
    next(b for b in at.button if b.label == "Compress").click().run()
    assert not at.exception and at.success, [e.value for e in at.error]
    wait_for(lambda: list((info.path / "compressed").glob("*/compress.json")), timeout=300, what="compression")
    at.run()
    assert not at.exception
    names = list(at.dataframe[0].value["variant"])
    assert names == ["fp32", "fp32-onnx", "int8"]
    assert len(at.get("plotly_chart")) == 1
    [axis] = [r for r in at.radio if r.key.startswith("c_axis_")]
    axis.set_value("latency at batch 32 (ms)").run()  # the same chart against another cost
    assert not at.exception and len(at.get("plotly_chart")) == 1


def test_compression_waits_for_training_on_the_cpu_and_runs_one_at_a_time(tmp_path, digits_run):
    """The app's compression holds the queue's CPU device locks: while a run trains it waits (and says so), and a
    second compression of the same run is refused while the first is at work."""
    import contextlib
    import shutil

    from effnet.base import locks
    from effnet.compression import compressions

    root = tmp_path / "checkpoints"
    run = shutil.copytree(digits_run, root / "digits")
    with pytest.raises(ValueError, match="nothing to compress"):
        compressions.start(run, root, int8=False, qat_epochs=0, ratios=[], finetune_epochs=0)
    (run / compressions.FOLDER).symlink_to(tmp_path)  # a planted link must not send the files elsewhere
    with pytest.raises(ValueError, match="symbolic link"):
        compressions.start(run, root, int8=True, qat_epochs=0, ratios=[], finetune_epochs=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    (run / compressions.FOLDER).unlink()
    with contextlib.ExitStack() as held:
        for lock in cpu_locks(root):  # a training run holds the CPU
            held.enter_context(locks.exclusive(lock))
        out = compressions.start(run, root, int8=True, qat_epochs=0, ratios=[], finetune_epochs=0, budget_s=0.05)
        wait_for(lambda: (files.read_json(out / runs.STATUS) or {}).get("state") == "waiting", timeout=60,
                 what="compression to wait for the CPU")
        assert compressions.working(out) and not (out / compressions.COMPRESS).exists()
        with pytest.raises(ValueError, match="being compressed already"):
            compressions.start(run, root, int8=True, qat_epochs=0, ratios=[0.3], finetune_epochs=0)
    wait_for(lambda: not compressions.working(out), timeout=300, what="the compression to end")
    assert [r["name"] for r in compressions.load_result(out)["variants"]] == ["fp32", "fp32-onnx", "int8"]
    assert compressions.outputs(run) == [out] and (out / "int8.onnx").is_file()


def test_results_page_shows_the_own_classes_confusion(monkeypatch, digits_run, digits):
    serve_app_from(monkeypatch, digits_run.parent, digits.parent)
    at = open_app("views/results.py")
    assert not at.exception, at.exception
    assert any("classes the model mixes up" in c.value for c in at.caption)  # the class-level heatmap
    assert not any(s.key == "drill" for s in at.selectbox)  # no superclasses to drill into
