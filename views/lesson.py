"""Lesson: a guided walk through compound scaling for a 45-minute class, each step linking to the page that goes deeper."""

import pandas as pd
import streamlit as st

from effnet import ScalingSpec, model_card
from effnet.analysis import results
from effnet.analysis.charts import imagenet_figure1
from effnet.arch.card import block_table, scaling_methods
from effnet.arch.scaling import PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA
from effnet.arch.zoo import SOURCE, imagenet_models
from effnet.base.text import si
from effnet.training import runs
from views.prefill import EXPLORER, METHODS_TAB, Prefill, open_page
from views.widgets import chart, csv_safe

st.title("Lesson")
st.caption("Compound scaling in six steps, about 45 minutes, and a last one on what comes next. Each step says what to look for and links to the page "
           "that goes deeper.")

st.header("1. The question: how should a network grow?")
st.markdown(
    "You have a working image classifier (EfficientNet-B0) and more compute than it uses. There are three ways to "
    "spend it: make the network **deeper** (more layers), **wider** (more channels per layer) or feed it images of "
    "higher **resolution**. Each helps at first, then saturates: a very deep network is hard to train, a very wide "
    "shallow one misses high-level features, and big images need more layers to see their larger patterns. The "
    "EfficientNet paper's answer: grow all three together, in a fixed balance.")
chart(imagenet_figure1(imagenet_models()), "figure1",
      note=f"The paper's Figure 1, redrawn from {SOURCE}. Look for the EfficientNet line sitting above ResNet, "
           "DenseNet and MobileNet: more ImageNet accuracy for the same number of parameters.")

st.header("2. The rule: one coefficient, three dimensions")
st.latex(r"d = \alpha^{\phi},\quad w = \beta^{\phi},\quad r = \gamma^{\phi},\qquad "
         r"\alpha \cdot \beta^{2} \cdot \gamma^{2} \approx 2")
st.markdown(
    "φ says how much compute to add; α, β, γ say how to split it. Cost grows linearly with depth but with the "
    "square of width and of resolution, so FLOPs grow like d·w²·r² = (α·β²·γ²)^φ: with the constraint, each step "
    f"of φ about doubles them. A small grid search at φ=1 found α={PAPER_ALPHA:g}, β={PAPER_BETA:g}, "
    f"γ={PAPER_GAMMA:g}.")

st.header("3. Try it: move φ")
phi = st.slider("φ", -2.0, 7.0, 1.0, 0.5, key="lesson_phi")
spec = ScalingSpec(phi=phi)
card, base = model_card(spec), model_card(spec.baseline)
tiles = st.columns(4)
tiles[0].metric("Depth", f"×{spec.depth_mult:.2f}")
tiles[1].metric("Width", f"×{spec.width_mult:.2f}")
tiles[2].metric("Resolution", f"{spec.resolution} px")
tiles[3].metric("MACs (FLOPs)", si(card.macs), f"×{card.macs / base.macs:.2f} of φ=0", delta_color="off")
st.markdown(f"**Look for:** the formula promises ×{spec.predicted_flops_ratio:.2f} the FLOPs of φ=0; the real model "
            f"has ×{card.flops_ratio:.2f}, because channels are rounded to multiples of 8, repeats are rounded up "
            "and resolution to whole pixels.")
st.page_link("views/explorer.py", label="Go deeper: the scaling explorer (every stage, B0-B7, custom α, β, γ)",
             icon=":material/tune:")

st.header("4. One dimension or all three, at the same cost")
st.markdown("The same budget reached by scaling only depth, only width, only resolution, or all three "
            "(CIFAR geometry). Compound scaling wins in the paper because it keeps the network balanced.")
st.dataframe(pd.DataFrame(scaling_methods(ScalingSpec(phi=max(phi, 1.0)))), hide_index=True, width="stretch")
st.markdown("**Look for:** the column of FLOPs against φ=0: a fair comparison needs the same *actual* cost, and "
            "rounding moves each method's cost differently.")
if st.button("Go deeper: the explorer's Scaling methods tab", icon=":material/tune:", key="lesson_methods"):
    open_page(EXPLORER, Prefill(explorer_tab=METHODS_TAB))  # the explorer opens on that tab, not on Stages
st.page_link("views/study.py", label="Train the comparison: a scaling-methods study (four runs at one cost, their "
             "accuracy and CAMs), or the grid search that found α, β, γ", icon=":material/science:")

st.header("5. What the study found")
study = pd.DataFrame([{"variant": name, "validation top-1 (%)": val, "test top-1 (%)": test}
                      for name, (val, test) in results.SEED_STUDY.items()])
left, right = st.columns([2, 3])
left.dataframe(study, hide_index=True, width="stretch")
right.markdown(
    "B0-B7 trained from scratch on CIFAR-100 for 200 epochs (SGD with momentum, cross-entropy). Accuracy rises "
    "with size, but slowly: from B0 to B7 the model grows 16-fold in parameters for about 2-3 points, and B7 is "
    "not the best. **Look for:** the accuracy-per-parameter trade-off, and validation predicting test.")
found = results.collect(runs.checkpoints_dir())
if found:
    columns, table = results.study_table(found)
    right.markdown(f"**Your runs** ({len(found)}): validation and test top-1 at each run's selected epoch (its best "
                   "validation epoch)")
    # One row per run, like the seed study's table beside it (a row per measure showed 1.5 of 30 runs' columns).
    summary = pd.DataFrame([r for r in table if r[""] in (results.VAL_AT_SELECTED, results.TEST_AT_SELECTED)])
    summary = summary.set_index("").T.rename(columns={results.VAL_AT_SELECTED: "validation top-1 (%)",
                                                      results.TEST_AT_SELECTED: "test top-1 (%)"})
    right.dataframe(csv_safe(summary.rename_axis("run")), width="stretch", height=min(36 * (len(summary) + 1) + 3, 330))
    right.caption(results.OPTIMISTIC_NOTE)
    st.page_link("views/results.py", label="Go deeper: Results (Table 1, accuracy vs size, validation vs test)",
                 icon=":material/leaderboard:")
else:
    right.info("No runs of your own yet. On the Train page, the quick CPU demo trains a small model in a few "
               "minutes; the seed-study preset queues B0-B7 for 200 epochs (a GPU server; hours).")
    st.page_link("views/train.py", label="Go to the Train page", icon=":material/model_training:")

st.header("6. Where does a model look? Class activation maps")
st.markdown(
    "A class activation map (Grad-CAM) takes the last feature map that still has some resolution, weights each "
    "of its channels by how much it raises the class's score (the gradient), and adds them up: bright regions "
    "are the evidence the model used. **Look for:** maps that sit on the object rather than the background, "
    "bigger models covering more of the object, and what changes when you explain a class other than the top "
    "prediction.")
st.page_link("views/cam.py", label="Go deeper: Class activation maps (your images, each run side by side)",
             icon=":material/visibility:")

st.header("7. Next: the block itself (attention, EfficientNetV2)")
attention = pd.DataFrame(block_table(ScalingSpec.official("b0")))
left, right = st.columns([2, 3])
left.dataframe(attention, hide_index=True, width="stretch")
right.markdown(
    "Every B0 block ends its depthwise conv with **squeeze-and-excitation** (SE): pool each channel, a small "
    "bottleneck, a gate per channel. **ECA** replaces the bottleneck with a 1-D conv across the channels (a few "
    "weights per block); **CBAM** adds a spatial gate after SE's channel gate. The study this lab reproduces names "
    "attention as its future work. The same authors' **EfficientNetV2** replaced the early MBConv blocks with "
    "**Fused-MBConv** (one kxk conv instead of 1x1 + depthwise): depthwise convolutions are cheap in FLOPs but slow "
    "on accelerators. **Look for:** how little of B0's size attention is, and whether it buys accuracy.")
st.page_link("views/study.py", label="Train it: the attention study (one backbone with SE, ECA, CBAM and none; their "
             "accuracy and where each looks)", icon=":material/science:")
