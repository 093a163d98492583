"""Compress page: make a finished run small and fast (int8, channel pruning) and read the trade-off."""

from pathlib import Path

import pandas as pd
import streamlit as st

from effnet.analysis.charts import compression
from effnet.base import files
from effnet.base.access import readonly
from effnet.compression.compressions import (
    COMPRESS,
    FOLDER,
    MAX_FINETUNE_EPOCHS,
    load_result,
    losing,
    outputs,
    start,
    working,
)
from effnet.training import runs
from views.routes import download_url
from views.widgets import caller, chart, plain, refused

root = runs.checkpoints_dir()
who = caller()

st.title("Compress a trained model")
st.caption("int8 (ONNX Runtime) and structured channel pruning (Torch-Pruning, then a short fine-tune), each "
           "measured on this machine's CPU on the run's own test images: size, latency at batch 1 and 32, top-1.")

finished = [i for i in runs.list_runs(root) if i.state == "finished" and runs.shown_checkpoint(i.path)]
if not finished:
    st.info("No finished run yet. Train one on the Train page (the quick CPU demo takes a few minutes, or your own "
            "images), then come back.")
    st.page_link("views/train.py", label="Go to the Train page", icon=":material/model_training:")
    st.stop()
by_id = {i.run_id: i for i in finished}
chosen = st.selectbox("Run", list(by_id), format_func=lambda r: f"{by_id[r].label} · {r}", key="c_run")
info = by_id[chosen]


with st.form("compress"):
    cols = st.columns(4)
    int8 = cols[0].checkbox("int8", value=True, key="c_int8")
    qat = cols[1].number_input("Quantization-aware fine-tune (epochs, 0 = off)", value=0, step=1, min_value=0,
                               max_value=MAX_FINETUNE_EPOCHS, key="c_qat",
                               help="Fine-tunes with the weights rounded to the int8 grid (activations are not "
                                    "modelled), then quantizes again; shown as int8-qat beside the plain int8. "
                                    "Its gain varies from run to run: compare the two rows.")
    ratios = cols[2].multiselect("Prune channels", [0.1, 0.2, 0.3, 0.5, 0.7], default=[0.3], key="c_ratios",
                                 format_func=lambda r: f"{r:.0%}")
    finetune = cols[3].number_input("Fine-tune after pruning (epochs)", value=1, step=1, min_value=0,
                                    max_value=MAX_FINETUNE_EPOCHS, key="c_finetune")
    may = who.may_manage(info) and not readonly()
    go = st.form_submit_button("Compress", type="primary", disabled=not may,
                               help=None if may else "Only the run's owner or the teacher can compress it here.")
    if go:
        try:
            start(info.path, root, int8, int(qat), ratios, int(finetune), caller=who)
        except (ValueError, OSError, PermissionError) as exc:
            refused(exc)
        else:
            st.success("Started in the background: progress and results appear below (a minute or more on a CPU).")
            st.toast("Compression started", icon=":material/check_circle:")


def show(out: Path) -> None:
    """One compression: its progress while it works, then the table, the plots and the downloads."""
    status = files.read_json(out / runs.STATUS) or {}
    try:
        result = load_result(out)
    except files.Damaged as exc:
        st.error(f"{out.name}: damaged ({exc})")
        return
    if result is None:
        if status.get("state") == "failed":
            st.error(f"Failed: {status.get('error')}")
        elif not working(out):
            st.error("The compression process is gone (killed, or the server restarted). Last output:\n\n"
                     + runs.log_tail(out))
        else:
            steps = max(1, int(status.get("steps") or 1))
            st.progress(min(1.0, int(status.get("step") or 0) / steps),
                        text=f"{status.get('state', 'starting')}: {status.get('doing', '')}")
        return
    rows = result["variants"]
    table = pd.DataFrame([{"variant": r["name"], "size (MB)": round(r["size_bytes"] / 1e6, 2),
                           "params (M)": round(r["params"] / 1e6, 3),
                           "batch 1 (ms)": r["latency_ms_b1"], "batch 32 (ms)": r["latency_ms_b32"],
                           "test top-1 (%)": r["test_top1"], "runs in": r.get("runtime", "")} for r in rows])
    st.dataframe(table, hide_index=True, width="stretch")
    lost = losing(result)
    if lost:
        st.warning("Lost more than a few points of test top-1 against fp32: " + ", ".join(
            f"{plain(r['name'])} ({r['test_top1'] - rows[0]['test_top1']:+.1f})" for r in lost)
            + ". Pruned models recover with more fine-tuning (raise 'Fine-tune after pruning'); int8 recovers with a "
              "quantization-aware fine-tune. A run trained longer also compresses better.")
    st.caption(f"{result.get('test_images', '?')} test images, {result.get('threads', '?')} CPU threads, every "
               "number from one process. fp32 is the model as trained (PyTorch); fp32-onnx the same weights in "
               "ONNX Runtime, so you can see how much of int8's speed is the runtime and how much is int8.")
    cost = st.radio("Cost on the x axis", ["size (MB)", "latency at batch 1 (ms)", "latency at batch 32 (ms)"],
                    horizontal=True, key=f"c_axis_{out.name}")
    value = {"size (MB)": lambda r: r["size_bytes"] / 1e6, "latency at batch 1 (ms)": lambda r: r["latency_ms_b1"],
             "latency at batch 32 (ms)": lambda r: r["latency_ms_b32"]}[cost]
    chart(compression([(r["name"], value(r), r["test_top1"]) for r in rows], cost), f"chart_{out.name}",
          note="Test top-1 of every variant against its cost (diamonds: the fp32 model). Look for variants far to the "
               "left at (almost) the height of fp32: smaller or faster for little accuracy.")
    per_row = 4  # every variant gets its button, four to a row (a fixed count would drop the rest)
    for first in range(0, len(rows), per_row):
        for col, r in zip(st.columns(per_row), rows[first:first + per_row], strict=False):
            download(col, r, out)


def download(col, row: dict, out: Path) -> None:
    """A variant's file, streamed from disk: the PyTorch weights for fp32 (the run's best.pt), the ONNX file for
    the others."""
    name = row["name"]
    if name == "fp32":
        path, what = runs.shown_checkpoint(info.path), "PyTorch .pt"
        file = path.name if path is not None else ""
    else:
        path, what = out / str(row.get("file")), ".onnx"
        file = f"{FOLDER}/{out.name}/{path.name}"
    if path is not None and path.is_file() and not path.is_symlink():
        col.link_button(plain(f"{name} ({what})"), download_url(info.run_id, file), width="stretch")


def when(name: str) -> str:
    """``20261127-031500`` -> ``27/11 03:15``. A fixed label: one that changed as the work ended would make
    Streamlit treat the choice as a new widget and lose it."""
    return f"{name[6:8]}/{name[4:6]} {name[9:11]}:{name[11:13]}" if len(name) == 15 else name


@st.fragment(run_every=2)
def results() -> None:
    done = outputs(info.path)
    if not done:
        st.caption("No compression of this run yet.")
        return
    picked = st.selectbox("Compression (when it was started)", [d.name for d in done], key="c_out", format_func=when)
    show(info.path / FOLDER / picked)


st.subheader("Results")
results()
st.markdown(f"Each compression is kept in the run's folder (`{FOLDER}/<time>/{COMPRESS}` and the .onnx files); "
            "the command line does the same: `python -m effnet.compress RUN --int8 --prune 0.3 --out DIR`.")
