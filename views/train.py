"""Train page: configure runs, queue them, watch them live. Training is reached only through effnet.queue.jobs."""

import time
from collections import Counter
from pathlib import Path

import streamlit as st

from effnet import OFFICIAL, ScalingSpec
from effnet.analysis.charts import training_curves
from effnet.arch.baselines import MODELS as BASELINES
from effnet.arch.baselines import BaselineSpec
from effnet.arch.scaling import GEOMETRIES, PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, SCALINGS
from effnet.arch.scaling import VARIANTS as ALL_VARIANTS
from effnet.base.access import limits, named, nickname_code, readonly, set_name
from effnet.base.text import counted, si
from effnet.data.cifar import DataError, data_dir
from effnet.data.folder import delete_dataset, own_datasets, unpack_zip
from effnet.queue import jobs, slurm
from effnet.training import plan, runs
from effnet.training.config import AUGMENTATIONS, CIFAR_VAL_SIZE, QUICK_DEMO, QUICK_DEMO_PHI, SCHEDULES, TrainConfig
from effnet.training.config import SEED_STUDY as SEED
from effnet.training.devices import device_slots
from effnet.training.plan import BlockChoice
from views.routes import download_url
from views.widgets import (
    OWN_TABLE,
    block_choice,
    block_widgets,
    caller,
    chart,
    fit_to_data,
    plain,
    refused,
    tidy_now,
    warn_if_no_cifar,
    whose,
)

VARIANTS = [v.upper() for v in ALL_VARIANTS]  # B0-B7, then V2-S/M/L
B_LINE = [v.upper() for v in OFFICIAL]  # the seed study's B0-B7
CIFAR = "CIFAR-100"
SHOWN_RUNS = 20  # run cards and curves on the page (every queued or training run is always among them)
# The form's widgets (t_<name>) that are TrainConfig fields; their defaults and the presets come from effnet.
FIELDS = {"epochs": "epochs", "batch": "batch_size", "lr": "lr", "momentum": "momentum", "nesterov": "nesterov",
          "wd": "weight_decay", "smoothing": "label_smoothing", "schedule": "schedule", "warmup": "warmup_epochs",
          "ema": "ema", "augment": "augment", "seed": "seed", "compile": "compile", "device": "device",
          "subset": "subset", "eval_subset": "eval_subset", "val_size": "val_size"}
ALL_IMAGES = ("subset", "eval_subset")  # None in TrainConfig ("all images") is 0 in the form


def widget_values(settings: dict) -> dict:
    """TrainConfig fields -> the form's widget values (only those given)."""
    return {w: (settings[f] or 0 if w in ALL_IMAGES else settings[f]) for w, f in FIELDS.items() if f in settings}


def form_settings() -> dict:
    """The form's widget values -> TrainConfig fields, typed as TrainConfig types them."""
    s, d = st.session_state, TrainConfig()
    typed = {f: (None if s[f"t_{w}"] is None else type(getattr(d, f) if getattr(d, f) is not None else 0)(s[f"t_{w}"]))
             for w, f in FIELDS.items()}
    return typed | {f: typed[f] or None for f in ALL_IMAGES}


DEFAULTS = {"variants": ["B0"], "baselines": [], "custom": False, "c_phi": QUICK_DEMO_PHI, "c_alpha": PAPER_ALPHA,
            "c_beta": PAPER_BETA, "c_gamma": PAPER_GAMMA, "scaling": "compound", "geometry": "cifar",
            "start": "scratch", "dataset": CIFAR, "init": None, **widget_values(TrainConfig().to_dict())}
# The block widgets (t_block_*) at the paper's block; "the model's own" fused stages is OWN_TABLE in its box.
PAPER_BLOCK = {f"block_{k}": v for k, v in BlockChoice().fields().items()} | {"block_fused_stages": OWN_TABLE}
DEFAULTS |= PAPER_BLOCK
QUICK_CPU = {"variants": [], "baselines": [], "custom": True, "c_phi": QUICK_DEMO_PHI, "geometry": "cifar",
             **widget_values(QUICK_DEMO)}
SEED_STUDY = {"variants": B_LINE, "baselines": [], "custom": False, "scaling": "compound", "start": "scratch",
              **PAPER_BLOCK, **widget_values(SEED)}

for name, value in DEFAULTS.items():
    st.session_state.setdefault(f"t_{name}", value)


def apply(preset: dict) -> None:
    for name, value in preset.items():
        st.session_state[f"t_{name}"] = value


root = runs.checkpoints_dir()
who = caller()
slots = device_slots()
has_gpu = slots[0].startswith("cuda")

st.title("Train")

warn_if_no_cifar()
@st.cache_data(ttl=10, show_spinner=False)
def cluster_request(distributed: bool, given: slurm.Settings) -> tuple[str, object]:
    """(``"ok"``, the request) or (``"down"``/``"bad"``, why): asked of Slurm at most every 10 s per setting (three
    scontrol questions), not on every rerun of every student's page."""
    try:
        return "ok", slurm.request(distributed, given)
    except slurm.SlurmError as exc:
        return "down", str(exc)
    except ValueError as exc:
        return "bad", str(exc)


on_slurm = True  # until the backend says otherwise: a broken setting never falls back to this machine silently
try:
    on_slurm = slurm.backend() == "slurm"
    asked = st.session_state.get("t_distributed")
    answer, cluster = cluster_request(bool(asked), slurm.settings()) if on_slurm else ("ok", None)
    if answer == "down":
        raise slurm.SlurmError(cluster)
    if answer == "bad":
        raise ValueError(cluster)
except slurm.SlurmError as exc:
    st.warning(f"**Runs go to a Slurm cluster, and Slurm is not answering now:** {plain(exc)}. Nothing can be "
               "started until it does; runs already there keep their last known state.")
except ValueError as exc:  # a setting that cannot work (a typo, or more than the partition has): said, not a crash
    st.error(f"**The cluster settings cannot work:** {plain(exc)}. Nothing can be started until the server's "
             "operator fixes it.")
else:
    if cluster is not None:
        st.info(f"**Runs train on the Slurm cluster** ({plain(slurm.summary(cluster, bool(asked)))}): each run is "
                "one Slurm job; its state and reason show on its card.")
if not on_slurm and has_gpu:
    st.success("A CUDA GPU is available: runs use it (bf16, channels_last, data and augmentation on the GPU).")
elif not on_slurm:
    st.info("**No GPU here: training runs on the CPU, which is slow.** B0 trains at roughly 30-50 images/s on two "
            "cores, so one epoch of the 45k training images takes 15-25 minutes, and evaluating the 10k test "
            f"images about 2 minutes. For a demo in minutes, use the quick CPU setting (φ={QUICK_DEMO_PHI:g}, "
            f"{QUICK_DEMO['subset']:,} training images, {QUICK_DEMO['eval_subset']:,} evaluation images, "
            f"{QUICK_DEMO['epochs']} epochs).")

presets = st.columns(3)
presets[0].button("Quick CPU demo", on_click=apply, args=(QUICK_CPU,), key="preset_quick",
                  help="A small model on a subset: finishes in a few minutes on a laptop.")
presets[1].button("Seed study (B0-B7)", on_click=apply, args=(SEED_STUDY,), key="preset_seed",
                  help="The study this lab grew from: B0-B7 from scratch, SGD with momentum, cross-entropy, 200 epochs "
                       "(a GPU server; hours). Every field stays editable.")
presets[2].button("Reset", on_click=apply, args=(DEFAULTS,), key="preset_reset")

def add_dataset(upload, name: str) -> None:
    """Unpack an uploaded zip as a dataset of this browser's (the library checks the zip, the quota and the name)."""
    try:
        if upload is None:
            raise ValueError("choose a zip file first")
        added = unpack_zip(upload.getvalue(), data_dir(), name, who)
    except (DataError, ValueError, PermissionError) as exc:
        st.error(f"Not added: {exc}")
        return
    skipped = f"; {added.skipped:,} file(s) were not images and were left out" if added.skipped else ""
    st.success(f"Added {plain(added.name)}: {len(added.counts)} classes, {added.split[0]:,} training and {added.split[1]:,} "
               f"test images{skipped}. Choose it as the dataset below.")


def dataset_rows(found: list) -> None:
    """Each own dataset: its classes (shown as plain text: they are folder names from someone's zip), its size, and
    Delete for its owner and the teacher."""
    for d in found:
        line, button = st.columns([6, 1], vertical_alignment="center")
        mine = f" · by {plain(whose(d.owner, who))}"
        line.caption(f"**{plain(d.name)}**{mine} · {d.split[0] + d.split[1]:,} images · {si(d.bytes, 1)}B · "
                     + ", ".join(plain(c) for c in d.classes[:12]) + (" …" if len(d.classes) > 12 else ""))
        if who.may_manage(d) and not readonly() and button.button("Delete", key=f"del_ds_{d.name}"):
            try:
                delete_dataset(data_dir(), d.name, who)
            except (DataError, PermissionError) as exc:
                st.error(f"Not deleted: {exc}")
            else:
                st.rerun()


with st.expander("Your own images (a zip of class folders)"):  # a fixed label: a changed one would close it
    quota = limits()
    st.caption("A zip with one folder per class, named after it (optionally train/ and test/ above them), any "
               "image format the CAM page reads. Files that are not images are left out and counted; every class "
               "needs at least 2 images; without a test folder a fifth of each class is held out for testing. "
               f"Each student may keep {quota.datasets} datasets of {quota.dataset_bytes / 1024**2:,.0f} MB in all. "
               "Then choose it as the dataset below.")
    cols = st.columns([3, 2, 1], vertical_alignment="bottom")
    upload = cols[0].file_uploader("Zip of class folders", type=["zip"], key="own_zip", disabled=readonly())
    name = cols[1].text_input("Name", key="own_name", placeholder="e.g. leaves", max_chars=40)
    if cols[2].button("Add", key="own_add", disabled=readonly()):
        add_dataset(upload, name)
    tidy_now(root)
    dataset_rows(own_datasets(data_dir()))
own = {d.name: d.folder for d in own_datasets(data_dir())}

finished = {i.run_id: i for i in runs.list_runs(root) if i.state == "finished" and runs.shown_checkpoint(i.path)}
if st.session_state.t_dataset not in (CIFAR, *own):  # removed since it was chosen
    st.session_state.t_dataset = CIFAR
if st.session_state.t_init not in finished:
    st.session_state.t_init = None

with st.form("new_runs"):
    st.subheader("New runs")
    models, options = st.columns(2)
    st.caption("Every value is checked when you press Start; anything out of range is explained right under "
               "the button.")
    with models:
        st.multiselect("Official variants (one run each)", VARIANTS, key="t_variants", bind="query-params")
        st.multiselect("Conventional networks to compare (one run each, same recipe)", list(BASELINES),
                       key="t_baselines", format_func=lambda m: BASELINES[m][0], bind="query-params",
                       help="torchvision's ResNet, MobileNetV2 and DenseNet, the networks the paper compares with; "
                            "the cifar geometry gives them a 3x3 stride-1 stem without max-pool.")
        st.checkbox("Add a custom spec", key="t_custom", bind="query-params")
        cols = st.columns(4)
        cols[0].number_input("φ", step=0.5, key="t_c_phi", bind="query-params")
        cols[1].number_input("α", step=0.05, key="t_c_alpha", bind="query-params")
        cols[2].number_input("β", step=0.05, key="t_c_beta", bind="query-params")
        cols[3].number_input("γ", step=0.05, key="t_c_gamma", bind="query-params")
        with st.expander("Block: attention, Fused-MBConv (default: the paper's MBConv with SE 0.25)"):
            block_widgets("t_block")
        st.selectbox("Scaling method", SCALINGS, key="t_scaling",
                     help="compound, or one dimension alone at the compound model's actual multiply-adds (as the studies)")
        st.radio("Geometry", GEOMETRIES, horizontal=True, key="t_geometry", bind="query-params")
        st.selectbox("Dataset", [CIFAR, *own], key="t_dataset",
                     help="CIFAR-100, or your own images (add them above); the class count follows the dataset.")
        st.radio("Start", list(plan.STARTS), format_func=plan.STARTS.get, horizontal=True, key="t_start",
                 help="ImageNet weights: downloaded for official variants (internet needed). A finished run: its "
                      "backbone, with a new classifier when the classes differ; the model must be the same.")
        st.selectbox("Finished run to start from", list(finished), key="t_init", index=None,
                     format_func=lambda r: f"{finished[r].label} · {r}", placeholder="(for 'from a finished run')")
    with options:
        cols = st.columns(3)
        cols[0].number_input("Epochs", step=1, key="t_epochs", bind="query-params")
        cols[1].number_input("Batch size", step=1, key="t_batch", bind="query-params")
        cols[2].number_input("Learning rate", format="%.4f", key="t_lr", bind="query-params")
        cols = st.columns(3)
        cols[0].number_input("Training images (0 = all)", step=100, key="t_subset", bind="query-params")
        cols[1].number_input("Eval images (0 = all)", step=100, key="t_eval_subset", bind="query-params")
        cols[2].number_input("Validation held out", step=100, key="t_val_size", bind="query-params",
                             placeholder=f"auto: {CIFAR_VAL_SIZE:,}",
                             help=f"Training images held out to choose the reported epoch. Empty: {CIFAR_VAL_SIZE:,} of "
                                  "CIFAR-100, a tenth of your own images; 0: none (the last epoch is reported).")
        st.selectbox("Device", ["auto", "cpu", "cuda"], key="t_device",
                     help="auto: the GPU when there is one, else the CPU")
        with st.expander("Optimiser and schedule"):
            cols = st.columns(3)
            cols[0].number_input("Momentum", key="t_momentum", bind="query-params")
            cols[1].number_input("Weight decay", format="%.5f", key="t_wd", bind="query-params")
            cols[2].number_input("Label smoothing", key="t_smoothing", bind="query-params")
            cols = st.columns(3)
            cols[0].selectbox("Schedule", SCHEDULES, key="t_schedule", bind="query-params")
            cols[1].number_input("Warm-up epochs", key="t_warmup", bind="query-params")
            cols[2].number_input("EMA decay (0 = off)", format="%.4f", key="t_ema", bind="query-params")
            cols = st.columns(3)
            cols[0].selectbox("Augmentation", AUGMENTATIONS, key="t_augment", bind="query-params")
            cols[1].number_input("Seed", step=1, key="t_seed", bind="query-params")
            cols[2].checkbox("Nesterov", key="t_nesterov", bind="query-params")
            st.checkbox("torch.compile (GPU; minutes to compile on a CPU)", key="t_compile", bind="query-params")
        if on_slurm:
            st.checkbox("Each run across several nodes (one DDP job of EFFNET_SLURM_NODES x EFFNET_SLURM_TASKS)",
                        key="t_distributed", bind="query-params")
        elif len(slots) > 1:
            st.checkbox(f"Each run across all {len(slots)} devices (one DDP job; otherwise one run per device, "
                        "several at once)", key="t_distributed", bind="query-params")
    start = st.form_submit_button("Start", type="primary", disabled=readonly(),
                                  help="This server is a read-only demo" if readonly() else None)
    # Fields have no hard bounds: a bad value reaches the library, whose message appears here, under Start,
    # instead of the box turning red while Start silently does nothing.
    feedback, feedback_note = st.empty(), st.empty()


def planned_specs() -> list[ScalingSpec | BaselineSpec]:
    """The specs the form describes (``plan.specs``); ValueError (naming the field) when one cannot be built."""
    s = st.session_state
    init = str(finished[s.t_init].path) if s.t_start == "run" and s.t_init in finished else None
    custom = plan.Custom(s.t_c_phi, s.t_c_alpha, s.t_c_beta, s.t_c_gamma) if s.t_custom else None
    return plan.specs(s.t_variants, s.t_baselines, custom, scaling=s.t_scaling, geometry=s.t_geometry,
                      num_classes=plan.class_count(dataset_kind(), own.get(s.t_dataset)),
                      normalization=plan.input_statistics(s.t_start, init),
                      block=block_choice("t_block"))


def dataset_kind() -> str:
    return "cifar100" if st.session_state.t_dataset == CIFAR else "folder"


def fitted(configs: list[TrainConfig]) -> list[TrainConfig]:
    """The configs with their image counts cut to the chosen dataset's; what changed is said under Start."""
    dataset = st.session_state.t_dataset
    return fit_to_data(configs, None if dataset == CIFAR else own[dataset], feedback_note)


def planned_configs(specs: list[ScalingSpec | BaselineSpec]) -> list[TrainConfig]:
    s = st.session_state
    return plan.configs(specs, form_settings(), start=s.t_start, dataset=dataset_kind(), folder=own.get(s.t_dataset),
                        init_from=finished[s.t_init].path if s.t_start == "run" else None)

if start:
    try:
        specs = planned_specs()
        if not specs:
            raise ValueError("variants: choose at least one variant or add a custom spec")
        # All or none: every run is checked (settings, memory, disk) before the first is queued.
        started = jobs.submit_many(fitted(planned_configs(specs)), root, caller=who,
                                   distributed=bool(st.session_state.get("t_distributed")))
    except (ValueError, TypeError, PermissionError, slurm.SlurmError) as exc:
        refused(exc, feedback)
    else:
        at_once = ("as Slurm jobs; their state shows on their cards" if on_slurm else "one at a time"
                   if len(slots) == 1 else f"up to {len(slots)} at once, one per device")
        feedback.success(f"Queued {len(started)} run(s): {', '.join(started)}. They train {at_once}.")
        st.toast(f"Queued {len(started)} run(s)", icon=":material/check_circle:")


def act(action, info: runs.RunInfo, done: str | None = None) -> None:
    """Run a queue action for this browser: what it did as a toast (``done``), a refusal right under the run's
    buttons."""
    try:
        action(info.run_id, root, caller=who)
    except (PermissionError, ValueError, RuntimeError) as exc:
        st.session_state[f"refused_{info.run_id}"] = str(exc)
        return
    if done:
        st.toast(done.format(label=plain(info.label)), icon=":material/check_circle:")


def stop(info: runs.RunInfo) -> None:
    """Stop, saying at once what happens next (a running run checkpoints at its next step, which takes a moment)."""
    act(jobs.stop, info, "Stopping {label}: it saves a checkpoint at its next step, then stops.")
    st.session_state[f"stopping_{info.run_id}"] = True


def rename(info: runs.RunInfo) -> None:
    """The rename form's action; the run stays chosen in 'Manage a run' under its new name."""
    act(lambda rid, r, caller: jobs.rename(rid, st.session_state[f"label_{info.run_id}"], r, caller=caller), info,
        "Renamed: {label} is now " + plain(st.session_state[f"label_{info.run_id}"]))
    st.session_state.manage_run = info.run_id


def outcome(info: runs.RunInfo) -> str:
    """A finished run's result in one line: test top-1 at its selected epoch (and validation's)."""
    row = runs.selected_row(runs.read_metrics(info.path))
    if row is None:
        return ""
    val = f" · val {row['val_top1']:.1f}%" if row.get("val_top1") is not None else ""
    return f"test top-1 {row['test_top1']:.1f}%{val} (epoch {row['epoch']})"


def run_card(info: runs.RunInfo) -> None:
    """One run: label, state, device, progress, the buttons its owner (or the teacher) may press, errors."""
    prog = runs.progress(info)
    mine = who.may_manage(info) and not readonly()
    with st.container(border=True):
        head, bar, buttons = st.columns([2, 4, 2], vertical_alignment="center")
        where = info.status["slot"] if info.status.get("slot") and info.active else ""
        on_cluster = slurm.detail(info.status)
        if on_cluster and (info.pending or info.state == "failed"):
            where = on_cluster
        where = f" · {plain(where)}" if where else ""  # plain() trims: the separator stays outside ("running· cpu")
        head.markdown(f"**{plain(info.label)}**  \n`{info.run_id}` · {info.state}{where} · by "
                      f"{plain(whose(info.owner, who))}")
        stopping = info.active and st.session_state.get(f"stopping_{info.run_id}")
        bar.progress(prog.fraction, text="stopping: saving a checkpoint at the next step" if stopping else prog.text)
        ips = info.status.get("images_per_second")
        if ips and info.active:
            bar.caption(f"{ips:.0f} images/s")
        if info.state == "finished":
            bar.caption(outcome(info))
        if not info.active:
            st.session_state.pop(f"stopping_{info.run_id}", None)
        if mine and info.pending:
            buttons.button("Stop", key=f"stop_{info.run_id}", on_click=stop, args=(info,), disabled=bool(stopping))
        elif mine and jobs.resumable(info):
            buttons.button("Resume", key=f"resume_{info.run_id}", on_click=act, args=(jobs.resume, info))
        refused = st.session_state.pop(f"refused_{info.run_id}", None)
        if refused:
            buttons.error(refused)
        if info.state in ("failed", "damaged") and info.error:
            st.error(plain(info.error, lines=True))
        if jobs.stopped_by_teacher(info):
            when = time.strftime("%H:%M", time.localtime(info.job[jobs.STOPPED_BY_TEACHER]))
            st.warning(f"Stopped by the teacher at {when}. " + ("Its owner can resume it: it goes on from its last "
                       "checkpoint, or starts again if it had not begun." if info.owner != who.owner else
                       "Press Resume when the teacher says so: it goes on from its last checkpoint, or starts "
                       "again if it had not begun."))


def manage(infos: list[runs.RunInfo]) -> None:
    """Downloads, rename and delete for one chosen run (inside the live fragment, so it never goes stale)."""
    st.subheader("Manage a run")
    by_id = {r.run_id: r for r in infos}
    chosen = st.selectbox("Run", list(by_id), key="manage_run",
                          format_func=lambda rid: f"{by_id[rid].label} · {rid} · {by_id[rid].state}")
    info = by_id[chosen]
    cols = st.columns(4)
    for col, name in zip(cols[:2], (runs.BEST, runs.LAST), strict=True):
        path: Path = info.path / name
        if path.is_file() and not path.is_symlink():  # streamed from disk by the lab's route, never held in memory
            col.link_button(f"Download {name} ({path.stat().st_size / 1e6:.0f} MB)", download_url(info.run_id, name))
        else:
            col.caption(f"No {name} yet" if not path.is_symlink() else f"{name} is a symbolic link: refused")
    if not who.may_manage(info) or readonly():
        cols[2].caption("Only its owner or the teacher can rename or delete this run.")
        return
    with cols[2].form(f"rename_{chosen}", border=False):
        st.text_input("New name", value=info.label, max_chars=80, key=f"label_{chosen}")
        st.form_submit_button("Rename", on_click=rename, args=(info,))
    confirm = cols[3].checkbox("Yes, delete it", key="confirm_delete")
    if cols[3].button("Delete run", disabled=not confirm, key="delete_run"):
        act(jobs.delete, info, "Deleted {label}")
        st.session_state.pop("confirm_delete", None)
        if f"refused_{chosen}" not in st.session_state:
            st.rerun(scope="fragment")
    refused = st.session_state.pop(f"refused_{chosen}", None)
    if refused:
        cols[3].error(refused)


def bulk_delete(infos: list[runs.RunInfo]) -> None:
    """The teacher's clean-up: every run of one student, or of one import, deleted at once."""
    groups: dict[str, list[str]] = {}
    for info in infos:
        if info.active:
            continue
        mine = info.owner is not None and info.owner == who.owner
        groups.setdefault("all your own runs" if mine else f"all runs of {whose(info.owner, who)}", []).append(
            info.run_id)
        batch = (info.job or {}).get("imported")
        if batch:
            groups.setdefault(f"the import {batch}", []).append(info.run_id)
    with st.expander("Delete many runs (teacher)"):
        if not groups:
            st.caption("Nothing to delete: every run is queued or training.")
            return
        pick = st.selectbox("Which", list(groups), format_func=lambda g: f"{g} ({counted(len(groups[g]), 'run')})",
                            key="bulk")
        sure = st.checkbox(f"Yes, delete {'this run' if len(groups[pick]) == 1 else 'these ' + counted(len(groups[pick]), 'run')}",
                           key="bulk_confirm")
        if st.button("Delete them", disabled=not sure, key="bulk_delete"):
            problems = jobs.delete_many(groups[pick], root, caller=who)
            st.session_state.pop("bulk_confirm", None)
            (st.error("Not all deleted: " + plain("; ".join(problems))) if problems else
             st.toast(f"Deleted {counted(len(groups[pick]), 'run')}", icon=":material/delete:"))


def name_students(infos: list[runs.RunInfo]) -> None:
    """The teacher's roll call: a name for each student code (the one each student's sidebar shows them)."""
    owners = sorted({i.owner for i in infos if i.owner is not None and i.owner != who.owner}, key=nickname_code)
    with st.expander("Name the students (teacher)"):
        if not owners:
            st.caption("No student has a run yet.")
            return
        st.caption("Each student's sidebar says \"You are student …\": ask for it, and give that code a name. "
                   "Run cards and lists then show the name beside the code.")
        code_col, name_col, save_col = st.columns([2, 3, 1], vertical_alignment="bottom")
        code = code_col.selectbox("Student", [nickname_code(o) for o in owners], key="name_code",
                                  format_func=lambda c: next(named(o, root) for o in owners if nickname_code(o) == c))
        name = name_col.text_input("Name (empty: none)", key="name_text", max_chars=40)
        if save_col.button("Save", key="name_save"):
            try:
                set_name(root, code, name, who)
            except (ValueError, PermissionError) as exc:
                refused(exc)
            else:
                st.toast(f"Student {code} is now {plain(name) if name.strip() else 'unnamed'}", icon=":material/badge:")


@st.fragment(run_every=2)
def live_runs() -> None:
    """Re-run every 2 s: reads the runs' files (state lives on disk, shared by every session)."""
    infos = runs.list_runs(root)
    jobs.heal(root, infos)
    st.subheader(f"Runs ({len(infos)})")
    if not infos:
        st.info("No runs yet: choose models above and press Start.")
        return
    # Every queued or training run, then the newest others: a term's 2,000 runs are one pick away in "Manage a
    # run" and all on the Results page, not 2,000 cards and curves redrawn every 2 s.
    pending = [i for i in infos if i.pending]
    shown = pending + [i for i in reversed(infos) if not i.pending][:max(0, SHOWN_RUNS
                                                                                                - len(pending))]
    shown.sort(key=infos.index)
    if len(shown) < len(infos):
        st.caption(f"Showing {len(shown)} of {len(infos)} runs: every queued or training one and the newest. "
                   "Manage a run (below) reaches any of them; Results shows them all.")
    for info in reversed(shown):
        run_card(info)
    labels = Counter(i.label for i in shown)
    curves = [(i.label + (f" ({i.run_id[-4:]})" if labels[i.label] > 1 else ""),
               runs.read_metrics(i.path) + runs.read_live(i.path)) for i in shown]
    curves = [(label, rows) for label, rows in curves if rows]
    if curves:  # one above the other, each the page's width: 20 runs' legend fits under a readable plot
        chart(training_curves(curves, "top1", width_px=820), "curve_top1",
              note="Top-1 of every run: solid train, dashed validation, dotted test; points within the first epochs "
                   "appear every few steps. Look for the gap between train and validation: a growing gap is "
                   "over-fitting.")
        chart(training_curves(curves, "loss", width_px=820), "curve_loss",
              note="Cross-entropy, same line styles. Falling means learning; the first steps are noisy. A validation "
                   "loss that keeps rising for epochs while train loss falls is over-fitting.")
    manage(infos)
    if who.teacher and not readonly():
        bulk_delete(infos)
        name_students(infos)


live_runs()
