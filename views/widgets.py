"""Widgets the pages share (layout only; every number comes from the effnet library)."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import streamlit as st

from effnet.arch.scaling import ATTENTIONS, SE_RATIO
from effnet.base import signin
from effnet.base.access import (
    OWNER_COOKIE,
    SHARED_QUOTA,
    TEACHER_COOKIE,
    Caller,
    caller_of,
    limits,
    named,
    new_owner_token,
    owner_from_cookie,
    per_address,
    readonly,
    server_secret,
    teacher_password,
    valid_owner_token,
)
from effnet.base.text import counted, headline, without_controls
from effnet.training import runs
from effnet.training.checkpoint import CheckpointError
from effnet.training.plan import BlockChoice


def linked_number(label: str, key: str, low: float, high: float, step: float, default: float,
                  help: str | None = None) -> float:
    """A slider and a number input bound to one value ``st.session_state[key]``."""
    if key not in st.session_state:
        st.session_state[key] = default
    st.session_state.setdefault(f"{key}_slider", st.session_state[key])
    st.session_state.setdefault(f"{key}_input", st.session_state[key])

    def copy_from(source: str) -> None:
        value = st.session_state[source]
        st.session_state[key] = st.session_state[f"{key}_input"] = value
        st.session_state[f"{key}_slider"] = min(max(value, low), high)  # the slider cannot show what is out of range

    left, right = st.columns([3, 1], vertical_alignment="bottom")
    left.slider(label, low, high, step=step, key=f"{key}_slider", help=help,
                on_change=copy_from, args=(f"{key}_slider",))
    # No bounds on the box: a value out of range goes through and the spec says why it is refused,
    # instead of the box turning red while the numbers silently stay put.
    right.number_input(label, step=step, key=f"{key}_input", label_visibility="collapsed",
                       on_change=copy_from, args=(f"{key}_input",), format="%.2f")
    return float(st.session_state[key])


# Every ASCII punctuation character can be backslash-escaped in Markdown (CommonMark); escaping them all turns
# links, images, emphasis, KaTeX ($), Streamlit's :colour[...] and :emoji: directives and HTML into plain text.
_MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")


def csv_safe(frame):
    """``frame`` as a table may show it: the toolbar's "Download as CSV" writes cells as they are, so text that
    starts like a spreadsheet formula (a label ``=HYPERLINK(...)``, a class ``+cmd|...``) gets the apostrophe the
    lab's own CSV gives it (``results.csv_cell``), in cells, column names and the index alike."""
    from effnet.analysis.results import csv_cell

    safe = frame.map(csv_cell)
    safe.columns = [csv_cell(c) for c in safe.columns]
    safe.index = safe.index.map(csv_cell)
    return safe


def plain(text: object, lines: bool = False) -> str:
    """Text a user controls (a run label, a class or file name, a string from an imported file) made safe to put
    inside Markdown: shown as typed, never rendered (no image fetched, no link, no formula), without control or
    bidirectional-override characters. ``lines`` keeps its line breaks (an error with the end of a log)."""
    def one(line: str) -> str:
        return _MARKDOWN_SPECIAL.sub(r"\\\1", without_controls(line))

    if lines:
        return "  \n".join(one(line) for line in str(text).splitlines())
    return one(str(text))


def secret(name: str) -> str | None:
    """A value from Streamlit's secrets (``.streamlit/secrets.toml``), or None when there is none."""
    try:
        value = st.secrets.get(name)
    except (FileNotFoundError, KeyError, ValueError):  # no secrets file, or an unreadable one
        return None
    return str(value) if value else None


def caller() -> Caller:
    """This browser: the owner token of its signed cookie (``views/routes.py`` gives every browser one; nothing is in
    the page address) and whether it holds a valid teacher cookie.

    Without the cookie (a browser that refuses cookies, or AppTest) the tab gets a token of its own for this
    session only: safe, but a reload starts afresh.
    """
    root = runs.checkpoints_dir()
    key = server_secret(root)
    cookies = st.context.cookies
    token = owner_from_cookie(cookies.get(OWNER_COOKIE), key)
    if token is None:
        if not valid_owner_token(st.session_state.get("owner")):
            st.session_state["owner"] = new_owner_token()
        token = st.session_state["owner"]
    password = teacher_password(secret("teacher_password"))
    teacher = password is None or signin.is_teacher(root, cookies.get(TEACHER_COOKIE), key, password)
    return caller_of(root, token, teacher)


# Projector rules the theme cannot set: no text under 14 px. Streamlit draws inline code (run ids, command lines) at
# 12 px, and KaTeX a formula's exponents at 0.7 of its 1.21 em (13.6 px); measured on every page with 30 runs
# (tests/test_browser.py).
PROJECTOR_CSS = "<style>code { font-size: 14px !important; } .katex { font-size: 1.3em; }</style>"


def projector_style() -> None:
    """The page-wide style for a classroom projector (``PROJECTOR_CSS``), once per page run."""
    st.html(PROJECTOR_CSS)


def whose(owner: str | None, who: Caller) -> str:
    """Who a run or dataset belongs to, as this browser reads it: "you", "the command line" or a student's nickname
    (the one the sidebar shows that student, so the teacher can match it to a person). Raw text (a name is the
    teacher's typing): ``plain()`` it inside Markdown."""
    return "you" if owner is not None and owner == who.owner else named(owner, runs.checkpoints_dir())


def _link(where, text: str, href: str) -> None:
    """A link that opens in this tab (the lab's own pages; never user text)."""
    where.markdown(f'<a href="{href}" target="_self">{text}</a>', unsafe_allow_html=True)


def teacher_sign_in(who: Caller, here: str = "/") -> None:
    """Sidebar: who this browser is (a student and their limits, or the teacher) and the way to sign in or out,
    which comes back to ``here`` (this page's path)."""
    back = urllib.parse.urlencode({"next": here})
    if readonly():
        st.sidebar.info("Read-only demo: explore, read results and make CAMs; nothing can be started or deleted.")
        return
    if teacher_password(secret("teacher_password")) is None:
        return  # a single user: everybody is the teacher
    if who.teacher:
        st.sidebar.caption("Signed in as the teacher: you can manage every run.")
        _link(st.sidebar, "Sign out", f"/effnet/signout?{back}")
        return
    quota = limits()
    shared = SHARED_QUOTA if per_address() else ""
    st.sidebar.markdown(f"You are **{plain(named(who.owner, runs.checkpoints_dir()))}** here: your runs show it, and "
                        "so does the teacher's list.")
    st.sidebar.caption(f"You{shared} can have {counted(quota.queued, 'run')} queued or training at once, "
                       f"{counted(quota.compressions, 'compression')} at work, {counted(quota.datasets, 'dataset')} "
                       f"of your own ({quota.dataset_bytes / 1024**2:,.0f} MB) and "
                       f"{counted(quota.imported_runs, 'imported run')}; the teacher has no limit.")
    _link(st.sidebar, "Sign in as the teacher", f"/effnet/teacher?{back}")


def tidy_now(root: Path) -> None:
    """Clean up what crashes left (``effnet.housekeeping``; at most every 30 s per server) and say what was done."""
    from effnet.data.cifar import data_dir
    from effnet.housekeeping import tidy

    for line in tidy(root, data_dir()):
        st.toast(line[0].upper() + line[1:], icon=":material/cleaning_services:")


def chart(figure, key: str, where=st, *, note: str) -> None:
    """A chart as the lab draws it: full width, its own large fonts (Streamlit's theme would shrink them), and
    one line under it saying what it shows and what to look for (``note``; every chart has one)."""
    where.plotly_chart(figure, width="stretch", theme=None, key=key)
    where.caption(note)


@st.cache_resource(max_entries=8, show_spinner="Loading the model...")
def cached_run_model(path: str, mtime: float):
    """A run's model, loaded once per checkpoint version and shared by every session (``mtime`` renews it)."""
    from effnet.analysis.cam import default_device, run_model

    return run_model(Path(path), default_device())


@st.cache_data(show_spinner="Counting the dataset's images...", ttl=600)
def dataset_sizes(folder: str) -> tuple[int, int] | None:
    """(training, test) images of the CIFAR-100 copy in ``folder``, or None when there is none to read."""
    from effnet.data.cifar import DataError, load_cifar100

    try:
        data = load_cifar100(folder, download=False)
    except DataError:
        return None
    return len(data.train), len(data.test)


def fit_to_data(configs: Sequence, own_folder: Path | None, where=st) -> list:
    """The configs with their image counts cut to what the dataset has (CIFAR-100 in the data folder, or an own
    folder); each change is said in ``where``: a preset written for 50,000 images must not silently ask a small
    copy for more than it has."""
    from effnet.data.cifar import data_dir, dataset_present
    from effnet.data.folder import split_sizes
    from effnet.training.config import fit_to_dataset

    if own_folder is not None:
        sizes = split_sizes(own_folder)
    else:
        sizes = dataset_sizes(str(data_dir().resolve())) if dataset_present() else None
    if sizes is None:
        return list(configs)
    out = []
    for config in configs:
        config, note = fit_to_dataset(config, *sizes)
        if note:
            where.info(note)
        out.append(config)
    return out


def warn_if_no_cifar() -> None:
    """Before a form that trains on CIFAR-100: say it is missing and how to fix it, instead of runs that fail."""
    from effnet.data.cifar import data_dir, dataset_present, missing_data_message

    if not dataset_present():
        st.warning("**CIFAR-100 is not here yet.** Runs try to download it (169 MB) when they start; without "
                   f"internet they will fail. To fix it: {missing_data_message(data_dir())}")


def refused(exc: Exception, where=st) -> None:
    """Why an action did not start: in full next to its button, and its first clause as a toast (the eye may be
    anywhere on a projector; Streamlit folds a long toast, so that one is short enough to be read whole)."""
    where.error(f"Not started: {exc}")
    st.toast(f"Not started: {headline(str(exc))}", icon=":material/error:")


@st.cache_resource(show_spinner="Reading CIFAR-100...")
def cifar_test():
    """The CIFAR-100 copy in the data folder, read once per server (its test images feed the CAM strips)."""
    from effnet.data.cifar import load_cifar100

    return load_cifar100(download=False)


@st.cache_resource(max_entries=4, show_spinner="Reading the dataset...")
def folder_test(folder: str, size: int, seed: int):
    """A folder dataset as a run saw it (its own cache makes this quick after training)."""
    from effnet.data.folder import load_folder

    return load_folder(folder, size, seed)[0]


def run_dataset(config=None):
    """The dataset a run was trained on (CIFAR-100 unless ``config`` says a folder of your own images)."""
    from effnet.data.cifar import data_dir

    if config is not None and config.dataset == "folder":
        return folder_test(str(data_dir(config.data_dir)), config.spec.resolution, config.seed)
    return cifar_test()


def test_images_source(config=None) -> str | None:
    """What to call the test images a run's pages can show ("CIFAR-100", or "its dataset" for your own class
    folders), or None when there are none here (CIFAR-100 not downloaded)."""
    from effnet.data.cifar import dataset_present

    if config is not None and config.dataset == "folder":
        return "its dataset"
    return "CIFAR-100" if dataset_present() else None


ROAD_MAX_RESOLUTION = 64  # ROAD on the page only for small inputs: ~0.1 s per 32-px map, ~5 s per 224-px map (CPU)


def dataset_test_images(text: str, config=None) -> list[tuple[str, object]]:
    """``"0, 7, 42"`` -> those test images of the run's dataset (CIFAR-100 unless ``config`` says a folder), as
    (caption with the true class, picture); ValueError, IndexError or DataError when that is not possible."""
    import numpy as np
    from PIL import Image

    data = run_dataset(config)
    images = []
    from effnet.analysis.cam import MAX_CAM_IMAGES

    for part in [p for p in text.split(",") if p.strip()][:MAX_CAM_IMAGES]:
        index = int(part)
        array = data.test.images[index].permute(1, 2, 0).numpy()
        truth = data.fine_names[int(data.test.labels[index])]
        images.append((f"test #{index} ({truth})", Image.fromarray(np.ascontiguousarray(array))))
    return images


def load_run_models(infos: Sequence[runs.RunInfo], where=st) -> list[tuple[runs.RunInfo, object, object, list[str]]]:
    """(run, model, spec, class names) for each run that has a checkpoint, each model with its own run (a run
    without one yet is said and left out, so nothing after it shifts); a run that cannot load says why."""
    models = []
    for info in infos:
        shown = runs.shown_checkpoint(info.path)
        if shown is None:
            where.caption(f"{plain(info.label)}: no checkpoint yet")
            continue
        try:
            model, spec, names = cached_run_model(str(info.path), os.path.getmtime(shown))
            models.append((info, model, spec, names))
        except (CheckpointError, ValueError, OSError) as exc:
            where.error(f"{plain(info.label)}: {exc}")
    return models


def _heatmap(key: tuple, compute: Callable[[], object]) -> object:
    """A CAM result remembered for this browser (the last 64): moving the opacity slider blends again, it does not
    explain again (17 s with three runs on a CPU)."""
    memo = st.session_state.setdefault("_cam_results", OrderedDict())
    if key not in memo:
        memo[key] = compute()
        while len(memo) > 64:
            memo.popitem(last=False)
    memo.move_to_end(key)
    return memo[key]


def cam_strip(name: str, raw: object, models: Sequence[tuple[str, object, object, list[str]]], method: str,
              alpha: float, target_for: Callable[[object, list[str]], int | None] = lambda spec, names: None,
              layer: str = "last", road: bool = False, follows: dict[int, int] | None = None) -> None:
    """One image: the original, then each model's map over it with its top-5, side by side, each captioned with the
    run, the explained class and the method (and with ``road`` the map's faithfulness score). ``follows``: model
    index -> the index of the model whose explained class it explains (the sanity check's randomised copy explains
    what its trained model explained, not its own top class, so the pair is like for like)."""
    import hashlib

    from effnet.analysis.cam import METHOD_NAMES, SHOWN_MIN_SIDE, explain, for_display, image_size, load_image, overlay

    st.markdown(f"#### {plain(name)}")
    try:
        size = image_size(raw, name)  # the file's own size: what is shown below may be shrunk to 1,024 px
        picture = load_image(raw, name)  # a 12-MP photo is shrunk while it is decoded
    except ValueError as exc:
        st.error(plain(exc))
        return
    digest = hashlib.sha256(raw if isinstance(raw, bytes) else picture.tobytes()).hexdigest()
    fmt = "PNG" if max(picture.size) < SHOWN_MIN_SIDE else "JPEG"  # pixel art: PNG keeps its edges
    cols = st.columns(len(models) + 1)
    cols[0].image(for_display(picture), caption=f"original ({size[0]}×{size[1]} px)", width="stretch",
                  output_format=fmt)
    explained: dict[int, int] = {}
    for index, (col, (label, model, spec, names)) in enumerate(zip(cols[1:], models, strict=True)):
        leader = (follows or {}).get(index)
        target = explained[leader] if leader in explained else target_for(spec, names)
        scored = road and spec.resolution <= ROAD_MAX_RESOLUTION
        try:
            result = _heatmap((id(model), spec.name, digest, method, target, layer, scored),
                              lambda m=model, s=spec, t=target, r=scored: explain(m, s, picture, method=method,
                                                                                  target_class=t, layer=layer, road=r))
        except ValueError as exc:
            col.error(f"{plain(label)}: {plain(exc)}")
            continue
        explained[index] = result.target_class
        col.image(for_display(overlay(picture, result.heatmap, alpha)), width="stretch", output_format=fmt,
                  caption=f"{plain(label)}: where it sees '{plain(names[result.target_class])}' "
                          f"({METHOD_NAMES[method]}, {result.layer})")
        if result.road is not None:
            col.markdown(f"**Faithfulness (ROAD): {result.road:+.2f}**")
        elif road:
            col.caption(f"ROAD is not computed here at {spec.resolution} px (seconds per map on a shared server); "
                        "`python -m effnet.cam` computes it.")
        col.markdown("\n".join(f"{k + 1}. {plain(names[c])} {100 * p:.1f}%" for k, (c, p) in enumerate(result.top5)))


SE_RATIOS = (0.0625, 0.125, 0.25, 0.5, 1.0)
OWN_TABLE = -1  # "the model's own fused stages" in the box (a None option would read as nothing chosen)


def block_widgets(key: str, stages: int | None = None, table_fused: int = 0, where=st) -> BlockChoice:
    """The block controls (attention, SE ratio, Fused-MBConv stages) under widget keys ``<key>_*``, and what they
    choose. ``stages``: the spec's stage count (``table_fused`` of them fused by its own table), which offers one
    attention per stage; None (several specs at once, as on the Train page) offers one for all. The boxes stand one
    under the other: both pages give them a narrow column, where three in a row cut their labels and values."""
    state = st.session_state
    state.setdefault(f"{key}_attention", "se")
    state.setdefault(f"{key}_se_ratio", SE_RATIO)
    state.setdefault(f"{key}_fused_stages", OWN_TABLE)
    attention = where.selectbox("Attention", list(ATTENTIONS), format_func=ATTENTIONS.get, key=f"{key}_attention",
                                  help="After each MBConv block's depthwise conv. SE: the paper's squeeze-and-"
                                       "excitation; ECA: a 1-D conv across channels, no bottleneck; CBAM: SE's "
                                       "bottleneck on average- and max-pooled features, then a 7x7 spatial gate.")
    ratio = where.selectbox("SE ratio", SE_RATIOS, key=f"{key}_se_ratio", format_func=lambda r: f"{r:g}",
                              help="SE's (and CBAM's) bottleneck: this fraction of the block's input channels "
                                   "(the paper's 0.25).")
    fused = where.selectbox("Fused-MBConv stages", [OWN_TABLE, *range((stages or 7) + 1)],
                              key=f"{key}_fused_stages",
                              format_func=lambda n: "model's own" if n == OWN_TABLE else f"first {n}",
                              help="EfficientNetV2's block in the first N stages: one kxk conv instead of expand "
                                   "1x1 + depthwise kxk (faster on GPUs; no attention). Model's own: none for "
                                   "B0-B7, three for V2.")
    fused = None if fused == OWN_TABLE else fused
    if stages is not None and where.toggle("One attention per stage", key=f"{key}_per_stage"):
        n_fused = table_fused if fused is None else fused
        cols = where.columns(2)
        kinds = []
        for i in range(stages):  # a fused stage carries no attention: shown, fixed
            box = cols[i % len(cols)]
            if i < n_fused:
                box.selectbox(f"Stage {i + 1} (fused)", ["none"], format_func=ATTENTIONS.get, disabled=True,
                              key=f"{key}_stage_{i}_fused")
                kinds.append("none")
            else:
                kinds.append(box.selectbox(f"Stage {i + 1}", list(ATTENTIONS), format_func=ATTENTIONS.get,
                                           key=f"{key}_stage_{i}", index=list(ATTENTIONS).index(attention)))
        attention = ",".join(kinds)
    return BlockChoice(attention, ratio, fused)


def block_choice(key: str) -> BlockChoice:
    """What ``block_widgets(key)`` (one attention for all stages) holds now: read after a form is submitted."""
    state = st.session_state
    fused = state[f"{key}_fused_stages"]
    return BlockChoice(state[f"{key}_attention"], state[f"{key}_se_ratio"], None if fused == OWN_TABLE else fused)
