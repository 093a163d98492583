"""Studies (scaling methods at equal MACs, the coefficient grid search) and run bundles, end to end.

Real tiny studies: ``python -m effnet.study ... --wait`` queues real runs through the job queue on the
generated CIFAR-format archive; bundles are exported and imported by the real CLI, and hostile bundles
are built byte by byte.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import STUDY_TRAIN, cli, open_app, serve_app_from
from streamlit.testing.v1 import AppTest

from effnet.arch.card import model_card
from effnet.arch.scaling import PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, ScalingSpec
from effnet.experiments import bundle, study
from effnet.training import runs
from views.widgets import plain

# Trains models, starts processes or servers: the full suite's, not the edit loop's (-m 'not slow').
pytestmark = pytest.mark.slow

TRAIN = STUDY_TRAIN


# ----------------------------------------------------------------------------- planning
@pytest.mark.parametrize("budget", [ScalingSpec(phi=-2), ScalingSpec(phi=1), ScalingSpec.official("b3")])
def test_the_four_methods_cost_the_same_actual_multiply_adds(budget):
    plan = study.methods_plan(budget)
    assert [r["method"] for r in plan] == ["compound", "depth", "width", "resolution"]
    target = model_card(budget).macs
    for row in plan:
        assert abs(model_card(row["spec"]).macs / target - 1) <= 0.10, row
    # The nominal 2^phi would not: at phi=1 compound rounding gives 2.66x B0, not 2x.
    if budget.phi == 1:
        nominal = model_card(budget.with_scaling("width")).macs
        assert abs(nominal / target - 1) > 0.2


def test_several_budgets_at_once_use_the_given_coefficients():
    plan = study.methods_plan(ScalingSpec(phi=1, alpha=1.3, beta=1.1, gamma=1.1), phis=[1, 2])
    assert [r["phi"] for r in plan] == [1.0] * 4 + [2.0] * 4
    assert plan[4]["spec"].alpha == 1.3 and plan[4]["spec"].phi == 2


def test_grid_points_satisfy_the_constraint_include_the_paper_and_spread_out():
    points = study.grid_points(step=0.05, tolerance=0.1, max_points=8)
    assert len(points) == 8
    assert {"alpha": PAPER_ALPHA, "beta": PAPER_BETA, "gamma": PAPER_GAMMA} in [
        {k: p[k] for k in ("alpha", "beta", "gamma")} for p in points]
    for p in points:
        assert abs(p["alpha"] * p["beta"] ** 2 * p["gamma"] ** 2 - 2) <= 0.1 + 1e-9
        assert min(p["alpha"], p["beta"], p["gamma"]) >= 1
    assert len({p["alpha"] for p in points}) >= 4  # spread over the set, not the first N of one alpha
    every = study.grid_points(step=0.05, tolerance=0.1, max_points=None)
    assert len(every) > 50 and all(abs(p["constraint"] - 2) <= 0.1 + 1e-9 for p in every)


@pytest.mark.parametrize("kwargs, field", [({"step": 0}, "step"), ({"tolerance": -1}, "tolerance"),
                                           ({"max_points": 0}, "max_points"),
                                           ({"max_points": 10**6}, "max_points"),
                                           ({"ranges": {"alpha": (0.5, 2)}}, "alpha"),
                                           ({"ranges": {"beta": (1, float("inf"))}}, "beta"),
                                           # 825 million cells: 9 GB of server memory before the cap
                                           ({"step": 0.0016, "tolerance": 1000,
                                             "ranges": {"alpha": (1, 2.5), "beta": (1, 2.5), "gamma": (1, 2.5)}},
                                            "825,293,672 grid cells")])
def test_bad_grid_settings_are_refused_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        study.grid_points(**kwargs)


def test_a_study_into_a_file_is_refused_before_any_run_is_queued(tmp_path):
    (tmp_path / "a-file").write_text("x")
    root = tmp_path / "checkpoints"
    done = cli("effnet.study", "grid", "--out", str(tmp_path / "a-file" / "grid"), "--checkpoints", str(root),
               "--max-points", "1", "--epochs", "1", "--data-dir", str(tmp_path))
    assert done.returncode != 0 and "not a folder" in done.stderr and "Traceback" not in done.stderr
    assert not runs.list_runs(root)


def test_a_study_whose_runs_end_near_chance_says_so_and_what_to_change(tmp_path):
    from fake_runs import fake_run, row

    ten = ScalingSpec(phi=-4, num_classes=10)
    for name, score in (("a", 11.0), ("b", 17.0)):
        fake_run(tmp_path, name, [row(1, score, score)], spec=ten)
    out = study.new_study_dir(tmp_path, "grid")
    configs = [runs.load_config(tmp_path / n)[1] for n in ("a", "b")]
    study.record("grid", configs, ["a", "b"], [{"alpha": 1.2, "beta": 1.1, "gamma": 1.15}] * 2, out, tmp_path)
    said = study.load(out, tmp_path).near_chance()
    assert said is not None and "10.0%" in said and "17.0%" in said and "epochs" in said
    fake_run(tmp_path, "c", [row(1, 60.0, 60.0)], spec=ten)
    learned = study.new_study_dir(tmp_path, "grid-2")
    study.record("grid", [*configs, runs.load_config(tmp_path / "c")[1]], ["a", "b", "c"],
                 [{"alpha": 1.2, "beta": 1.1, "gamma": 1.15}] * 3, learned, tmp_path)
    assert study.load(learned, tmp_path).near_chance() is None  # one run learned: the comparison means something


# ----------------------------------------------------------------------------- real studies
def test_methods_study_trains_four_runs_at_one_budget(methods_study):
    root, out = methods_study
    data = json.loads((out / study.STUDY).read_text())
    assert data["kind"] == "methods"
    assert [r["method"] for r in data["runs"]] == ["compound", "depth", "width", "resolution"]
    loaded = study.load(out, root)
    assert all(r.state == "finished" and r.best_val is not None for r in loaded.runs)
    macs = [r.row["macs"] for r in loaded.runs]
    assert max(macs) / min(macs) <= 1.10
    for r in loaded.runs:  # the row's numbers are the card of the spec the run trained
        assert r.row["macs"] == model_card(r.info.spec).macs and r.row["params"] == model_card(r.info.spec).params
    assert out in study.list_studies(root)


def test_grid_study_picks_the_best_by_validation(tmp_path, cifar_dir):
    out = tmp_path / "grid"
    done = cli("effnet.study", "grid", "--max-points", "2", *TRAIN, "--subset", "32", "--data-dir", str(cifar_dir),
               "--out", str(out), "--checkpoints", str(tmp_path / "ck"), "--wait")
    assert done.returncode == 0, done.stderr
    data = json.loads((out / study.STUDY).read_text())
    assert data["kind"] == "grid" and len(data["runs"]) == 2
    assert any((r["alpha"], r["beta"], r["gamma"]) == (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA) for r in data["runs"])
    loaded = study.load(out, tmp_path / "ck")
    vals = {r.row["run"]: r.best_val for r in loaded.runs}
    assert data["best"]["run"] == max(vals, key=vals.get)
    assert data["best"]["val_top1"] == max(vals.values())


def test_a_study_never_overwrites_and_refuses_what_cannot_be_built(tmp_path, cifar_dir):
    ck = tmp_path / "ck"
    out = tmp_path / "s"
    out.mkdir()
    (out / study.STUDY).write_text("{}")
    done = cli("effnet.study", "methods", "--phi", "-2", *TRAIN, "--data-dir", str(cifar_dir), "--out", str(out),
               "--checkpoints", str(ck))
    assert done.returncode != 0 and "already holds a study" in done.stderr
    done = cli("effnet.study", "methods", "--phi", "-4", *TRAIN, "--data-dir", str(cifar_dir), "--out",
               str(tmp_path / "t"), "--checkpoints", str(ck))
    assert done.returncode != 0 and "resolution" in done.stderr
    assert not ck.exists() or not runs.list_runs(ck)  # nothing was queued


def test_a_study_file_pointing_outside_the_checkpoints_is_not_followed(methods_study, tmp_path):
    root, out = methods_study
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    data = json.loads((out / study.STUDY).read_text())
    data["runs"][0]["run"] = "/etc"
    data["runs"][1]["run"] = "../../../../../../tmp"
    (hostile / study.STUDY).write_text(json.dumps(data))
    loaded = study.load(hostile, root)
    assert [r.state for r in loaded.runs[:2]] == ["missing", "missing"]
    (hostile / study.STUDY).write_text('{"kind": "methods", "runs": [{"run": 3}]}')
    with pytest.raises(study.StudyError, match="run"):
        study.load(hostile, root)


# ----------------------------------------------------------------------------- bundles
def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_travels_bitwise_through_a_bundle(methods_study, tmp_path):
    root, out = methods_study
    run_dir = study.load(out, root).runs[0].info.path
    zipped = tmp_path / "run.zip"
    assert cli("effnet.runs", "export", str(run_dir), str(zipped), "--resumable").returncode == 0
    light = tmp_path / "light.zip"
    assert cli("effnet.bundle", "export", str(run_dir), str(light)).returncode == 0
    assert light.stat().st_size < 0.6 * zipped.stat().st_size  # by default no last.pt (optimizer state) travels
    elsewhere = tmp_path / "other"
    done = cli("effnet.runs", "import", str(zipped), "--checkpoints", str(elsewhere))
    assert done.returncode == 0, done.stderr
    new = Path(done.stdout.strip())
    assert new.parent == elsewhere and new.name == run_dir.name
    for name in (runs.BEST, runs.LAST, runs.METRICS, runs.CONFUSION):
        assert (new / name).read_bytes() == (run_dir / name).read_bytes(), name
    info = runs.read_run(new)
    assert info.state == "finished" and info.spec == runs.read_run(run_dir).spec
    again = cli("effnet.runs", "import", str(zipped), "--checkpoints", str(elsewhere))
    assert again.returncode == 0 and Path(again.stdout.strip()) != new  # never overwritten: a new name
    assert (new / runs.BEST).read_bytes() == (run_dir / runs.BEST).read_bytes()


def test_a_study_travels_with_all_its_runs(methods_study, tmp_path):
    root, out = methods_study
    zipped = tmp_path / "study.zip"
    assert cli("effnet.runs", "export", str(out), str(zipped), "--checkpoints", str(root)).returncode == 0
    elsewhere = tmp_path / "other"
    done = cli("effnet.runs", "import", str(zipped), "--checkpoints", str(elsewhere))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 4
    (imported,) = study.list_studies(elsewhere)
    there, here = study.load(imported, elsewhere), study.load(out, root)
    assert [r.row["method"] for r in there.runs] == [r.row["method"] for r in here.runs]
    assert [r.metrics for r in there.runs] == [r.metrics for r in here.runs]


def run_bundle(run_dir: Path, **replace: bytes) -> dict[str, bytes]:
    """The members of a valid one-run bundle, some replaced."""
    name = run_dir.name
    members = {"bundle.json": json.dumps({"format": 1, "kind": "run", "runs": [name]}).encode()}
    for f in bundle.FILES:
        if (run_dir / f).is_file():
            members[f"runs/{name}/{f}"] = (run_dir / f).read_bytes()
    for key, value in replace.items():
        members[f"runs/{name}/{key.replace('_', '.')}"] = value
    return members


def write_zip(path: Path, members: dict[str, bytes], symlink: str | None = None,
              declare: tuple[str, int] | None = None) -> Path:
    """A zip of ``members``; ``symlink`` adds a link member, ``declare`` lies about one member's size."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
        if declare:  # the central directory is written on close, from these entries
            zf.getinfo(declare[0]).file_size = declare[1]
    return path


def pickle_payload() -> bytes:
    class Boom:
        def __reduce__(self):
            return (print, ("owned",))

    buf = io.BytesIO()
    torch.save({"model": {}, "boom": Boom()}, buf)
    return buf.getvalue()


def other_weights() -> bytes:
    """A valid checkpoint of a different model than the run declares."""
    from effnet.arch.model import build_model

    buf = io.BytesIO()
    torch.save({"format": 1, "model": build_model(ScalingSpec(phi=-1)).state_dict()}, buf)
    return buf.getvalue()


def hostile_bundles(run_dir: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    name = run_dir.name
    good = run_bundle(run_dir)
    (tmp / "plain.zip").write_text("hello")
    return {
        "zip-slip": (write_zip(tmp / "slip.zip", good | {f"runs/{name}/../../../victim.txt": b"x"}), "outside"),
        "absolute": (write_zip(tmp / "abs.zip", good | {"/tmp/evil.txt": b"x"}), "outside"),
        "symlink": (write_zip(tmp / "link.zip", good, symlink=f"runs/{name}/label.json"), "link"),
        "10 GB declared": (write_zip(tmp / "huge.zip", good, declare=(f"runs/{name}/best.pt", 10 * 1024**3)),
                           "declares"),
        "pickle payload": (write_zip(tmp / "pickle.zip", run_bundle(run_dir, best_pt=pickle_payload())),
                           "could run code"),
        "malformed JSON": (write_zip(tmp / "json.zip", run_bundle(run_dir, config_json=b'{"spec": ')), "config"),
        "wrong weights": (write_zip(tmp / "spec.zip", run_bundle(run_dir, best_pt=other_weights())), "best.pt"),
        "not a zip": (tmp / "plain.zip", "not a zip"),
        "no manifest": (write_zip(tmp / "nomani.zip", {k: v for k, v in good.items() if k != "bundle.json"}),
                        "bundle.json"),
    }


def test_hostile_bundles_are_refused_and_write_nothing(methods_study, tmp_path):
    root, out = methods_study
    run_dir = study.load(out, root).runs[0].info.path
    target = tmp_path / "target"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    before = snapshot(target)
    for what, (path, reason) in hostile_bundles(run_dir, tmp_path).items():
        with pytest.raises(bundle.BundleError, match=reason):
            bundle.import_bundle(path, target)
        assert snapshot(target) == before, what
        assert not (tmp_path / "victim.txt").exists() and not Path("/tmp/evil.txt").exists()
    # The command line says why on stderr and exits non-zero (two of them through the real CLI).
    for name, reason in (("slip.zip", "outside"), ("pickle.zip", "could run code")):
        done = cli("effnet.runs", "import", str(tmp_path / name), "--checkpoints", str(target))
        assert done.returncode != 0 and "refused" in done.stderr and reason in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and snapshot(target) == before


def test_a_running_run_is_not_exported(tmp_path, methods_study):
    root, out = methods_study
    run_dir = study.load(out, root).runs[0].info.path
    copy = tmp_path / run_dir.name
    copy.mkdir()
    for f in (runs.CONFIG, runs.STATUS):
        (copy / f).write_bytes((run_dir / f).read_bytes())
    status = json.loads((copy / runs.STATUS).read_text()) | {"state": "queued"}
    (copy / runs.STATUS).write_text(json.dumps(status))
    done = cli("effnet.runs", "export", str(copy), str(tmp_path / "x.zip"))
    assert done.returncode != 0 and "queued" in done.stderr and not (tmp_path / "x.zip").exists()


# ----------------------------------------------------------------------------- the Study page
def study_page(monkeypatch, root: Path, cifar_dir: Path) -> AppTest:
    serve_app_from(monkeypatch, root, cifar_dir)
    at = open_app("views/study.py", timeout=180)
    assert not at.exception, at.exception
    return at


def test_a_student_is_told_to_ask_the_teacher_for_a_study_larger_than_the_quota(monkeypatch, tmp_path, cifar_dir):
    monkeypatch.setenv("EFFNET_TEACHER_PASSWORD", "s3cret")  # a class server: callers are students
    root = tmp_path / "checkpoints"
    at = study_page(monkeypatch, root, cifar_dir)
    at.button(key="s_start").click().run()  # a methods study: four runs, the quota is two
    assert not at.exception and not at.success
    assert any(e.value.startswith("Not started: This starts 4 runs") and "ask the teacher" in e.value
               for e in at.error)
    # In a student's words (no field prefix, no environment variable), and a toast short enough to show whole.
    assert not any("$" in e.value or "queue:" in e.value for e in at.error)
    assert [t.value for t in at.toast] == ["Not started: This starts 4 runs, and each student may have 2 queued or "
                                           "training at once"]
    assert study.list_studies(root) == [] and runs.list_runs(root) == []


def test_study_page_shows_the_comparison_and_the_methods_cams(monkeypatch, methods_study, cifar_dir):
    root, _ = methods_study
    at = study_page(monkeypatch, root, cifar_dir)
    table = at.dataframe[0].value
    assert list(table["method"]) == ["compound", "depth only", "width only", "resolution only"]
    assert len(at.get("plotly_chart")) == 1
    assert any(m.value.startswith(f"#### {plain('test #0')}") for m in at.markdown)  # a CAM strip per chosen image
    captions = [c.value for c in at.caption]
    assert any("Test top-1" in c and "one line per method" in c for c in captions)


def test_study_page_starts_a_grid_study_through_the_queue(monkeypatch, tmp_path, cifar_dir):
    root = tmp_path / "checkpoints"
    at = study_page(monkeypatch, root, cifar_dir)
    at.radio(key="s_kind").set_value("grid").run()
    for key, value in {"s_points": 2, "s_epochs": 1, "s_subset": 32, "s_evals": 32, "s_batch": 32}.items():
        at.number_input(key=key).set_value(value)
    at.slider(key="s_beta").set_value((PAPER_BETA, PAPER_BETA))  # the ranges searched, as the CLI's --beta-range
    at.slider(key="s_gamma").set_value((1.1, 1.2))
    at.button(key="s_start").click().run()
    assert not at.exception and at.success, [e.value for e in at.error]
    [folder] = study.list_studies(root)
    done = study.wait(folder, root, poll_s=0.5)
    assert [r.state for r in done.runs] == ["finished", "finished"]
    assert all(r.row["beta"] == PAPER_BETA and 1.1 <= r.row["gamma"] <= 1.2 for r in done.runs)
    assert any((r.row["alpha"], r.row["beta"], r.row["gamma"]) == (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA)
               for r in done.runs)
    at.run()
    assert not at.exception
    assert any(s.value.startswith("Best by validation top-1") for s in at.success)
    best = done.best.row
    at.button(key="win_explorer").click().run()  # "scale with the winner": the explorer opens prefilled
    assert not at.exception
    assert at.radio(key="mode").value == "Custom φ, α, β, γ"
    assert [at.number_input(key=f"{k}_input").value for k in ("alpha", "beta", "gamma")] == [
        best["alpha"], best["beta"], best["gamma"]]


# ----------------------------------------------------------------------------- the attention study
TINY = ["--phi", "-4", "--alpha", "3", "--beta", "3", "--gamma", "1"]  # 8-channel stages: seconds per run


def test_attention_plan_keeps_the_backbone_and_refuses_unknown_kinds():
    b0 = ScalingSpec.official("b0")
    plan = study.attention_plan(b0, ["se", "eca", "none"], se_ratios=[0.125, 0.25])
    assert [study.row_name("attention", r) for r in plan] == ["SE 0.125", "SE", "ECA", "no attention"]
    assert all(r["spec"].stages[3].out_channels == b0.stages[3].out_channels for r in plan)
    with pytest.raises(ValueError, match="^attentions: 'sk' is not one of"):
        study.attention_plan(b0, ["se", "sk"])
    with pytest.raises(ValueError, match="^attentions: each kind"):
        study.attention_plan(b0, ["se", "se"])


def test_attention_study_from_the_command_line_and_on_the_page(monkeypatch, tmp_path, cifar_dir):
    root, out = tmp_path / "ck", tmp_path / "ck" / "studies" / "attention"
    done = cli("effnet.study", "attention", *TINY, *TRAIN, "--subset", "32", "--data-dir", str(cifar_dir),
               "--out", str(out), "--checkpoints", str(root), "--wait")
    assert done.returncode == 0, done.stderr
    data = json.loads((out / study.STUDY).read_text())
    assert data["kind"] == "attention"
    assert [r["attention"] for r in data["runs"]] == ["se", "eca", "cbam", "none"]
    loaded = study.load(out, root)
    assert all(r.state == "finished" and r.info.spec.attention == r.row["attention"] for r in loaded.runs)
    assert [r.info.label.split(" · ")[:2] for r in loaded.runs][1] == ["φ=-4 (α=3, β=3, γ=1)", "ECA"]
    assert len({r.row["params"] for r in loaded.runs}) == 4  # each attention costs its own parameters

    at = study_page(monkeypatch, root, cifar_dir)
    assert list(at.dataframe[0].value["attention"]) == ["SE", "ECA", "CBAM", "no attention"]
    assert len(at.get("plotly_chart")) == 1
    assert any(m.value.startswith("**Faithfulness (ROAD)") for m in at.markdown)  # CAMs scored per attention
    refused = cli("effnet.study", "attention", *TINY, "--attention", "eca", *TRAIN, "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "leave --attention and --se-ratio out" in refused.stderr


def test_study_page_starts_an_attention_study(monkeypatch, tmp_path, cifar_dir):
    root = tmp_path / "checkpoints"
    at = study_page(monkeypatch, root, cifar_dir)
    at.radio(key="s_kind").set_value("attention").run()
    at.number_input(key="s_att_phi").set_value(-4.0)
    at.multiselect(key="s_attentions").set_value(["none", "eca"])
    for key, value in {"s_epochs": 1, "s_subset": 32, "s_evals": 32, "s_batch": 32}.items():
        at.number_input(key=key).set_value(value)
    at.button(key="s_start").click().run()
    assert not at.exception and at.success, [e.value for e in at.error]
    [folder] = study.list_studies(root)
    done = study.wait(folder, root, poll_s=0.5)
    assert [(r.row["attention"], r.state) for r in done.runs] == [("none", "finished"), ("eca", "finished")]
    at.text_input(key="s_se_ratios").set_value("0.2x")
    at.button(key="s_start").click().run()
    assert any("SE ratios: expected numbers separated by commas" in e.value for e in at.error), [e.value for e in at.error]
