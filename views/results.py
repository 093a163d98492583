"""Results page: the seed study's Table 1 from your runs, accuracy vs size, validation vs test, per-class views."""

import pandas as pd
import streamlit as st

from effnet.analysis import results
from effnet.analysis.charts import (
    LABELLED_POINTS,
    accuracy_vs_size,
    confusion_heatmap,
    imagenet_figure1,
    training_curves,
    val_vs_test,
)
from effnet.arch.zoo import SOURCE, imagenet_models
from effnet.base import files
from effnet.experiments import study
from effnet.training import runs
from views.widgets import caller, chart, csv_safe, plain

st.title("Results")
st.caption("Finished and running runs under the checkpoints folder. Test and validation top-1 are on CIFAR-100 "
           "(or the subsets the runs used); the paper's ImageNet numbers are shown for reference only.")

gathered = results.gather(runs.checkpoints_dir())
found = gathered.results
if gathered.left_out:
    with st.expander(f"{len(gathered.left_out)} run(s) left out of the results, and why"):
        st.markdown("\n".join(f"- `{run_id}`: {plain(why)}" for run_id, why in gathered.left_out))
if not found:
    st.info("No results yet: no run has finished an epoch. Start one on the Train page (the quick CPU demo takes "
            "a few minutes), then come back here.")
    st.page_link("views/train.py", label="Go to the Train page", icon=":material/model_training:")
    st.stop()

columns, table = results.study_table(found)
st.subheader("Table 1, from your runs")
# The paper's ImageNet numbers exist only for B0-B7: a caption, not a row of "None" for every custom run.
*measured, paper = table
st.dataframe(csv_safe(pd.DataFrame(measured).set_index("")), width="stretch")
reference = [f"{name} {value}" for name, value in paper.items() if name and value is not None]
if reference:
    st.caption(f"{paper['']}: " + ", ".join(reference) + ".")
st.download_button("Download the table as CSV", results.to_csv(columns, table), file_name="effnet-results.csv",
                   mime="text/csv", key="csv", on_click="ignore")
low, high = min(results.SEED_STUDY.items(), key=lambda kv: kv[1][1]), max(results.SEED_STUDY.items(),
                                                                           key=lambda kv: kv[1][1])
st.caption(f"The seed study (200 epochs, SGD+momentum) reached {low[1][1]:.2f} ({low[0]}) to {high[1][1]:.2f} "
           f"({high[0]}) test top-1; the paper's ImageNet-pretrained transfer reached 88.1 (B0) and 91.7 (B7).")

st.caption(results.OPTIMISTIC_NOTE)
no_val = [r.label for r in found if not r.has_validation]
if no_val:
    st.info(f"{len(no_val)} run(s) have no validation split, so their selected epoch is their last one: "
            + ", ".join(plain(label) for label in no_val[:6]) + ("…" if len(no_val) > 6 else ""))


def shown_runs(found: list[results.RunResult]) -> list[results.RunResult]:
    """The runs the charts below draw: all, this browser's, one recipe's or one study's (a room's dozens of runs
    make a readable chart only a group at a time)."""
    who, root = caller(), runs.checkpoints_dir()
    groups: dict[str, set[str] | None] = {"all runs": None}
    mine = {r.run_id for r in found if r.owner is not None and r.owner == who.owner}
    if mine and len(mine) < len(found):
        groups["your runs"] = mine
    recipes = sorted({r.recipe for r in found})
    for recipe in recipes if len(recipes) > 1 else []:
        groups[f"recipe: {recipe}"] = {r.run_id for r in found if r.recipe == recipe}
    for path in study.list_studies(root):
        try:
            members = {sr.info.run_id for sr in study.load(path, root).runs if sr.info is not None}
        except study.StudyError:
            continue
        if members & {r.run_id for r in found}:
            groups[f"study: {path.name}"] = members
    if len(groups) == 1:
        return found
    pick = st.selectbox("Runs in the charts", list(groups), key="r_show",
                        help="Runs of one recipe (epochs, data, schedule) share a line; a study's runs were trained "
                             "to be compared.")
    return found if groups[pick] is None else [r for r in found if r.run_id in groups[pick]] or found


charted = shown_runs(found)
scored = [(r.label, r.at_selected("test_top1"), r.at_selected("val_top1"), r) for r in charted]
left, right = st.columns(2)
chart(accuracy_vs_size([(lab, r.params, t, r.series, r.recipe) for lab, t, _, r in scored], "params"), "acc_params",
      left, note="One point per run: test top-1 at its selected epoch (best validation) against parameters (log "
                 "scale); EfficientNets of one recipe on one line, baselines as other symbols; past "
                 f"{LABELLED_POINTS} runs, hover a point for its name. Look for accuracy rising with size, and "
                 "which run gives the most accuracy per parameter.")
chart(accuracy_vs_size([(lab, r.macs, t, r.series, r.recipe) for lab, t, _, r in scored], "macs"), "acc_macs", right,
      note="The same against multiply-adds per image (the paper's FLOPs). Look for the runs that buy their "
           "accuracy with the fewest FLOPs.")
chart(imagenet_figure1(imagenet_models()), "figure1",
      note=f"For comparison, the paper's Figure 1 on ImageNet, redrawn from {SOURCE}: the same shape your runs "
           "above should show, EfficientNet's line above the conventional networks'.")
pairs = [(lab, v, t) for lab, t, v, _ in scored if v is not None]
left, right = st.columns(2)
chart(val_vs_test(pairs, results.pearson([p[1] for p in pairs], [p[2] for p in pairs])), "val_test", left,
      note="Each run's validation against test top-1, both at its selected epoch; on the dashed line they agree. Look for points far "
           "from it: there the validation split does not predict the test set.")
chosen = right.multiselect("Curves to overlay", [r.label for r in found], default=[r.label for r in charted][:8],
                           key="curve_runs")
chart(training_curves([(r.label, r.rows) for r in found if r.label in chosen], "top1"), "curves", right,
      note="Top-1 per epoch: solid train, dashed validation, dotted test. Look for when each run stops improving.")

st.subheader("Per run: classes")
by_id = {r.run_id: r for r in found}
run = by_id[st.selectbox("Run", list(by_id), format_func=lambda i: f"{by_id[i].label} · {i} · {by_id[i].state}",
                         key="class_run")]
which = st.radio("Epoch", ["best", "final"], horizontal=True, key="class_epoch",
                 format_func={"best": "selected", "final": "final"}.get,
                 help="selected: the epoch with the best validation top-1 (the last one without a validation split)")
try:
    confusion = results.load_confusion(run.path, which)
except files.Damaged as exc:
    st.error(f"This run's class views cannot be shown: damaged: {exc}")
    st.stop()
if confusion is None:
    st.info("This run has no confusion matrix yet (it is written at the end of each epoch).")
    st.stop()
per_class = confusion.per_class()
best, worst = st.columns(2)
best.markdown(f"**Best classes** (test, epoch {confusion.epoch})")
PERCENT = {"top-1 (%)": st.column_config.NumberColumn(format="%.1f")}
best.dataframe(csv_safe(pd.DataFrame(per_class[:10], columns=["class", "top-1 (%)", "images"])), hide_index=True,
               width="stretch", column_config=PERCENT)
worst.markdown("**Worst classes**")
worst.dataframe(csv_safe(pd.DataFrame(per_class[::-1][:10], columns=["class", "top-1 (%)", "images"])),
                hide_index=True, width="stretch", column_config=PERCENT)
if len(confusion.coarse_names) == 1:  # your own images: no superclasses, so the classes themselves
    chart(confusion_heatmap(confusion.matrix, confusion.fine_names, confusion.fine_names,
                            f"Confusion between the {len(confusion.fine_names)} classes"), "fine",
          note="Rows: the true class; columns: what the model predicted. Look for bright cells off the diagonal: "
               "classes the model mixes up.")
    st.stop()
chart(confusion_heatmap(confusion.coarse(), confusion.coarse_names, confusion.coarse_names,
                        "Confusion between the 20 superclasses"), "coarse",
      note="Rows: the true superclass; columns: what the model predicted. Look for bright cells off the diagonal: "
           "superclasses the model mixes up.")
group = st.selectbox("Drill down into a superclass", range(len(confusion.coarse_names)),
                     format_func=lambda i: confusion.coarse_names[i], key="drill")
names, grid = confusion.within(group)
chart(confusion_heatmap(grid, names, [*names, "elsewhere"], f"{confusion.coarse_names[group]}: its fine classes"),
      "fine", note="The fine classes of one superclass against each other; 'elsewhere' counts predictions outside "
                   "it. Look for pairs the model confuses (bright off-diagonal cells).")
