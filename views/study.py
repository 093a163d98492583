"""Study page: the paper's experiments in one action (scaling methods at equal cost, the α/β/γ grid search),
their comparison and CAMs, and bundles that carry runs and studies between installs."""

import io
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from effnet import OFFICIAL, ScalingSpec
from effnet.analysis.cam import ROAD_NOTE, cam_budget, colour_bar
from effnet.analysis.charts import METHOD_NAMES, attention_comparison, grid_search, methods_comparison
from effnet.arch.scaling import ATTENTIONS, PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, VARIANTS
from effnet.base.access import readonly
from effnet.data.cifar import DataError
from effnet.data.images import UPLOAD_TYPES
from effnet.experiments import bundle, study
from effnet.queue import jobs
from effnet.training import runs
from effnet.training.config import QUICK_DEMO, TrainConfig
from effnet.training.devices import device_slots
from views.prefill import EXPLORER, TRAIN, Prefill, open_page
from views.routes import bundle_url
from views.widgets import (
    caller,
    cam_strip,
    chart,
    csv_safe,
    dataset_test_images,
    fit_to_data,
    load_run_models,
    plain,
    refused,
    test_images_source,
    tidy_now,
    warn_if_no_cifar,
)

root = runs.checkpoints_dir()
who = caller()
has_gpu = device_slots()[0].startswith("cuda")
CUSTOM = "custom φ (one or more budgets)"
KIND_NAMES = {"methods": "Scaling methods at equal cost", "grid": "Coefficient grid search (α, β, γ at φ=1)",
              "attention": "Attention: SE, ECA, CBAM, none"}
CUSTOM_BACKBONE = "custom φ"

st.title("Studies")
st.caption("The study's experiments as one action each: compound scaling against one dimension alone at the same "
           "actual multiply-adds, the grid search that found α=1.2, β=1.1, γ=1.15, and its future work: the "
           "attention in every block. A study's runs go through the same queue as the Train page's and appear on "
           "every page.")


# ----------------------------------------------------------------------------- start a study
def start_form() -> None:
    """Kind, budget or grid, the shared training settings, Start; the outcome is shown under Start."""
    kind = st.radio("Study", list(KIND_NAMES), format_func=KIND_NAMES.get, horizontal=True, key="s_kind")
    d = TrainConfig().replace(**QUICK_DEMO)
    if kind == "methods":
        left, right = st.columns(2)
        budget = left.selectbox("Budget", [*(v.upper() for v in OFFICIAL), CUSTOM], index=len(OFFICIAL),
                                key="s_budget", help="The compound model's cost; each single dimension is solved to "
                                                     "the same actual multiply-adds.")
        phis = right.text_input("φ values (comma separated)", "1, 2" if has_gpu else "-1", key="s_phis",
                                disabled=budget != CUSTOM, help="One study row per φ: a curve per method.")
    elif kind == "attention":
        cols = st.columns(4)
        backbone = cols[0].selectbox("Backbone", [*(v.upper() for v in VARIANTS), CUSTOM_BACKBONE], key="s_backbone",
                                     index=len(VARIANTS), help="Every run has this shape; only the attention changes.")
        phi = cols[1].number_input("φ", value=-1.0 if not has_gpu else 0.0, step=0.5, key="s_att_phi",
                                   disabled=backbone != CUSTOM_BACKBONE)
        kinds = cols[2].multiselect("Attentions", list(ATTENTIONS), default=list(ATTENTIONS), key="s_attentions",
                                    format_func=ATTENTIONS.get)
        ratios = cols[3].text_input("SE ratios (comma separated)", "0.25", key="s_se_ratios",
                                    help="SE once per ratio (the paper's 0.25); e.g. 0.125, 0.25, 0.5")
    else:
        cols = st.columns(3)
        step = cols[0].number_input("Grid step", value=study.GRID_STEP, min_value=0.001, step=0.05, format="%.3f",
                                    key="s_step", help=f"At most {study.GRID_MAX_CELLS:,} grid cells are looked at.")
        tolerance = cols[1].number_input("Tolerance on α·β²·γ² = 2", value=study.GRID_TOLERANCE, min_value=0.0,
                                         step=0.05, format="%.3f", key="s_tol")
        points = cols[2].number_input("At most this many points", value=6 if not has_gpu else study.GRID_MAX_POINTS,
                                      min_value=1, max_value=study.GRID_POINTS_LIMIT, step=1, key="s_points")
        cols = st.columns(3)
        ranges = {name: cols[i].slider(f"{greek} from, to", 1.0, 2.5, study.GRID_RANGES[name], 0.05, key=f"s_{name}",
                                       help="The values searched; the paper's point (α=1.2, β=1.1, γ=1.15) is "
                                            "always added as the reference.")
                  for i, (name, greek) in enumerate({"alpha": "α", "beta": "β", "gamma": "γ"}.items())}
    cols = st.columns(5)
    epochs = cols[0].number_input("Epochs per run", value=d.epochs, step=1, key="s_epochs")
    subset = cols[1].number_input("Training images (0 = all)", value=0 if has_gpu else d.subset, step=500,
                                  key="s_subset")
    evals = cols[2].number_input("Eval images (0 = all)", value=0 if has_gpu else d.eval_subset, step=500,
                                 key="s_evals")
    batch = cols[3].number_input("Batch size", value=d.batch_size if not has_gpu else 128, step=16, key="s_batch")
    lr = cols[4].number_input("Learning rate", value=d.lr, step=0.01, format="%.3f", key="s_lr")
    start = st.button("Start the study", type="primary", key="s_start", disabled=readonly())
    if not start:
        return
    config = TrainConfig(epochs=int(epochs), subset=int(subset) or None, eval_subset=int(evals) or None,
                         val_size=d.val_size if not has_gpu else TrainConfig().val_size, batch_size=int(batch),
                         lr=float(lr))
    feedback, note = st.empty(), st.empty()  # the outcome first, right under Start; then what was cut to fit
    config = fit_to_data([config], None, note)[0]
    try:
        if kind == "methods":
            spec = (ScalingSpec(phi=0.0) if budget == CUSTOM else ScalingSpec.official(budget.lower()))
            values = study.numbers(phis, "φ values") if budget == CUSTOM else None
            if budget == CUSTOM and not values:
                raise ValueError("φ values: give at least one, e.g. 1, 2, 3")
            out = study.new_study_dir(root, f"methods-{budget if budget != CUSTOM else 'phi'}")
            made = study.queue_methods(spec, config, out, values, root, who)
        elif kind == "attention":
            spec = (ScalingSpec(phi=float(phi)) if backbone == CUSTOM_BACKBONE
                    else ScalingSpec.official(backbone.lower()))
            values = study.numbers(ratios, "SE ratios")
            out = study.new_study_dir(root, f"attention-{spec.name}")
            made = study.queue_attention(spec, config, out, kinds, values or None, root, who)
        else:
            out = study.new_study_dir(root, "grid")
            made = study.queue_grid(config, out, step=float(step), tolerance=float(tolerance),
                                    max_points=int(points), ranges=ranges, root=root, caller=who)
    except (ValueError, TypeError, PermissionError, RuntimeError) as exc:  # RuntimeError: Slurm not answering
        refused(exc, feedback)  # a bad φ value or SE ratio ("0.2x") is a ValueError too
        return
    st.session_state.s_open = out.name
    feedback.success(f"Queued {len(made['runs'])} runs; the study is open below.")
    st.toast(f"Study queued: {len(made['runs'])} runs", icon=":material/check_circle:")


tidy_now(root)  # an import a crash interrupted is finished or removed before the studies are listed
studies = study.list_studies(root)
with st.expander("Start a study", expanded=not studies):
    warn_if_no_cifar()
    start_form()
    st.markdown("On a GPU machine the same from the command line: `python -m effnet.study methods --variant b3 "
                "--epochs 30 --out DIR --wait`, `python -m effnet.study grid --max-points 12 --out DIR --wait` or "
                "`python -m effnet.study attention --variant b0 --attentions se,eca,cbam,none --out DIR --wait`.")
studies = study.list_studies(root)
if not studies:
    st.info("No study yet: start one above, or import a bundle (at the bottom of this page) trained elsewhere.")


# ----------------------------------------------------------------------------- one study
def read(path: Path) -> study.Study | study.StudyError:
    """A study as it is now, or why it cannot be read (the page reads each study once per rerun)."""
    try:
        return study.load(path, root)
    except study.StudyError as exc:
        return exc


def drawn_from(s: study.Study) -> tuple:
    """What of a study the page outside its live part shows: whether it ended, and which runs have a checkpoint."""
    return s.ended, tuple(r.info is not None and runs.shown_checkpoint(r.info.path) is not None for r in s.runs)


read_now = {p: read(p) for p in studies}
st.session_state["s_drawn"] = {p.name: drawn_from(s) for p, s in read_now.items() if isinstance(s, study.Study)}


def study_title(path: Path) -> str:
    s = read_now[path]
    if isinstance(s, study.StudyError):
        return f"{path.name} (damaged: {s})"
    when = time.strftime("%d %b %H:%M", time.localtime(float(s.data.get("created_at") or 0)))
    return f"{KIND_NAMES[s.kind]} · {len(s.runs)} runs · {when} · {path.name}"


def _pct(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def rows_table(s: study.Study) -> pd.DataFrame:
    rows = []
    for r in s.runs:
        if s.kind == "methods":
            first = {"method": METHOD_NAMES[r.row["method"]], "φ": r.row.get("phi")}
        elif s.kind == "attention":
            first = {"attention": study.row_name(s.kind, r.row)}
        else:
            first = {"α": r.row["alpha"], "β": r.row["beta"], "γ": r.row["gamma"], "α·β²·γ²": r.row.get("constraint")}
        progress = runs.progress(r.info).text if r.info is not None else "missing"
        rows.append(first | {"MACs (M)": round(r.row["macs"] / 1e6, 1), "params (M)": round(r.row["params"] / 1e6, 2),
                             "state": progress if r.state not in ("failed", "damaged") else r.state,
                             "val top-1 (best)": _pct(r.best_val), "test top-1 (at best val)": _pct(r.test_at_best_val)})
    return pd.DataFrame(rows)


def show_grid(s: study.Study) -> None:
    scored = [(r.row["alpha"], r.row["beta"], r.row["gamma"], r.best_val) for r in s.runs if r.best_val is not None]
    best = s.best
    if not scored:
        st.info("No grid point has finished an epoch yet; the chart appears as they do.")
        return
    win = (best.row["alpha"], best.row["beta"], best.row["gamma"]) if best else None
    chart(grid_search(scored, (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA), win), "grid_chart",
          note="Each dot is one grid point (β across, γ up, α printed; the constraint fixes it), coloured by its best "
               "validation top-1. Look for where the star (the winner) sits against the ring (the paper's point).")
    if best is None:
        return
    st.success(f"Best by validation top-1: α={win[0]:g}, β={win[1]:g}, γ={win[2]:g} ({best.best_val:.2f}%). "
               "Chosen on validation, never on test.")
    cols = st.columns(2)
    phi = float(s.data.get("settings", {}).get("phi") or 1.0)
    if cols[0].button("Scale with the winner: open the explorer", key="win_explorer"):
        open_page(EXPLORER, Prefill(phi, *win))
    if cols[1].button("Scale with the winner: train with it", key="win_train"):
        open_page(TRAIN, Prefill(phi, *win))


def show_methods(s: study.Study) -> None:
    points = [(r.row["method"], r.row["macs"], r.test_at_best_val) for r in s.runs if r.test_at_best_val is not None]
    if not points:
        st.info("No run has finished an epoch yet; the chart appears as they do.")
        return
    chart(methods_comparison(points, "test"), "methods_chart",
          note="Test top-1 (at each run's best validation epoch) against multiply-adds, one line per method; the "
               "runs of one budget sit at the same cost. Look for compound (thick line) above the others.")


def show_attention(s: study.Study) -> None:
    points = [(study.row_name(s.kind, r.row), r.row["params"], r.best_val, r.test_at_best_val) for r in s.runs
              if r.test_at_best_val is not None]
    if not points:
        st.info("No run has finished an epoch yet; the chart appears as they do.")
        return
    chart(attention_comparison(points), "attention_chart",
          note="Each attention on the same backbone, trained alike: test top-1 at the best validation epoch (filled) "
               "and that validation top-1 (ring) against parameters. Look for whether SE's extra parameters buy "
               "accuracy over none, and whether ECA gets it with almost none.")


SHOW = {"methods": show_methods, "grid": show_grid, "attention": show_attention}


@st.fragment(run_every=2)
def live(path: Path) -> None:
    """The study's runs as they train (re-read every 2 s: state lives on disk, shared by every session)."""
    try:
        s = study.load(path, root)
    except study.StudyError as exc:
        st.error(f"This study cannot be read: {exc}")
        return
    # The rest of the page (the CAMs, the export list) was drawn from the study as the last full run read it: when
    # that changes, the whole page is drawn again. Without this, a finished study's CAMs said "no checkpoint yet" and
    # its export was missing until a reload. (Compared with the full run's reading, never this run's own: a full run
    # is never interrupted, so a click's answer on it stays.)
    if drawn_from(s) != st.session_state.get("s_drawn", {}).get(path.name, drawn_from(s)):
        st.rerun()
    if not s.ended:
        jobs.heal(root)
        done = sum(r.state in runs.ENDED for r in s.runs)
        st.progress(done / len(s.runs), text=f"{done} of {len(s.runs)} runs ended")
    st.dataframe(csv_safe(rows_table(s)), width="stretch", hide_index=True)
    for r in s.runs:
        if r.state in ("failed", "damaged") and r.info is not None and r.info.error:
            st.error(f"{plain(r.info.label)}: {plain(r.info.error.splitlines()[0])}")
    if (warning := s.near_chance()) is not None:
        st.warning(warning)
    SHOW[s.kind](s)


def study_cams(s: study.Study) -> None:
    """The study's models' CAMs side by side for chosen images (uploaded or test images): the four methods at one
    budget, or each attention with its ROAD faithfulness (does attention change where the model looks?)."""
    st.subheader("What each method looks at" if s.kind == "methods" else "Where each attention looks")
    shown = [r for r in s.runs if r.info is not None and not r.info.damaged]
    if s.kind == "methods":
        phis = sorted({r.row["phi"] for r in s.runs})
        phi = st.selectbox("Budget (φ)", phis, key="s_cam_phi") if len(phis) > 1 else phis[0]
        shown = [r for r in shown if r.row["phi"] == phi]
    row_of = {r.info.run_id: r.row for r in shown}  # each model captioned by its own run's row, whichever loaded

    def caption(row: dict) -> str:
        if s.kind == "methods":
            return f"{METHOD_NAMES[row['method']]} ({row['macs'] / 1e6:,.0f} M MACs)"
        return f"{study.row_name(s.kind, row)} ({row['params'] / 1e6:,.2f} M params)"

    models = [(caption(row_of[info.run_id]), model, spec, names)
              for info, model, spec, names in load_run_models([r.info for r in shown])]
    images: list[tuple[str, object]] = []
    left, right = st.columns(2)
    for upload in left.file_uploader("Images (PNG, JPEG, WebP, GIF, BMP, TIFF)", type=list(UPLOAD_TYPES),
                                     accept_multiple_files=True, key="s_cam_upload") or []:
        images.append((upload.name, upload.getvalue()))
    config = shown[0].info.config if shown else None
    where = test_images_source(config)
    if where is not None:
        picked = right.text_input(f"Test images of {where} (indices, comma separated)", "0, 1", key="s_cam_cifar")
        try:
            images += dataset_test_images(picked, config)
        except (ValueError, IndexError, DataError) as exc:
            right.error(f"Could not take those test images: {exc}")
    if not models or not images:
        st.caption("Maps appear once the runs have a checkpoint and an image is chosen.")
        return
    st.image(colour_bar(), caption="dark purple: no evidence · yellow: strongest evidence", width=420)
    road = s.kind == "attention"
    fit_models, fit = cam_budget(len(models), len(images), "gradcam", sanity=False)
    if len(models) > fit_models:  # one rerun's work stays bounded on a shared server
        st.warning(f"{len(models)} models: the first {fit_models} are explained.")
        models = models[:fit_models]
    for name, raw in images[:fit]:
        cam_strip(name, raw, models, "gradcam", 0.5, road=road)
    st.caption("Grad-CAM on each model (the other CAM methods are on the Class activation maps page). "
               + (ROAD_NOTE if road else "Look for which model looks at the object rather than the background."))


if studies:
    names = [p.name for p in studies]
    if st.session_state.get("s_open") not in names:
        st.session_state.s_open = names[0]
    opened = st.selectbox("Open a study", names, key="s_open",
                          format_func=lambda n: study_title(studies[names.index(n)]))
    path = studies[names.index(opened)]
    live(path)
    if isinstance(read_now[path], study.Study) and read_now[path].kind in ("methods", "attention"):
        study_cams(read_now[path])


# ----------------------------------------------------------------------------- bundles
st.subheader("Carry runs between installs")
st.caption("Train on a GPU machine, open the results in class: a bundle is one zip of a run or a study (settings, "
           "metrics, confusion, checkpoints). An import checks everything before writing anything and never "
           "replaces a run.")
out_col, in_col = st.container(), st.container()  # one above the other: the whole label of a study shows
with out_col:
    ended = [i for i in runs.list_runs(root) if i.state in runs.ENDED]
    whole = [p for p in studies if isinstance(read_now[p], study.Study) and read_now[p].ended]
    choices = {f"study: {study_title(p)}": p for p in whole} | {f"run: {i.label} · {i.run_id}": i.path for i in ended}
    if choices:
        pick = st.selectbox("Export", list(choices), key="s_export")
        resumable = st.checkbox("Resumable (with last.pt)", key="s_resumable",
                                help="Off: the runs' best.pt and files (enough for every page); on: they can also "
                                     "be trained further after the import, at about twice the size.")
        kind = "study" if pick.startswith("study: ") else "run"
        try:
            size = bundle.export_size(choices[pick], root, resumable)
        except bundle.BundleError as exc:
            st.error(str(exc))
        else:
            st.link_button(f"Download the bundle (about {size / 1e6:,.1f} MB)",
                           bundle_url(kind, choices[pick].name, resumable))
            limit_mb = st.get_option("server.maxUploadSize")  # .streamlit/config.toml says why it is what it is
            if size > limit_mb * 1024**2:
                st.warning(f"This bundle is larger than the {limit_mb:,} MB the app accepts as an upload: import it "
                           "with `python -m effnet.bundle import` instead.")
    else:
        st.caption("Runs can be exported once they have ended.")
with in_col:
    upload = st.file_uploader("Import a bundle (.zip)", type=["zip"], key="s_import_file", disabled=readonly())
    if upload is not None and st.button("Import", key="s_import", disabled=readonly()):
        try:
            done = bundle.import_bundle(io.BytesIO(upload.getvalue()), root, who)
        except (bundle.BundleError, OSError) as exc:
            st.error(f"Refused: {exc}")
        else:
            st.success(f"Imported {len(done.runs)} run(s): {', '.join(p.name for p in done.runs)}"
                       + (" and their study (open it above)." if done.study else "."))
            if done.study is not None:
                st.session_state.pop("s_open", None)
