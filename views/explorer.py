"""Scaling explorer: pick a spec, see what compound scaling makes of it (all analytic, instant)."""

import pandas as pd
import streamlit as st

from effnet import OFFICIAL, ScalingSpec, model_card
from effnet.analysis.charts import METHOD_NAMES, network_picture, scaling_sweep
from effnet.arch import specs
from effnet.arch.baselines import MODELS as BASELINES
from effnet.arch.baselines import BaselineSpec, is_counted
from effnet.arch.card import at_equal_macs, official_vs_formula, scaling_methods, side_by_side
from effnet.arch.scaling import (
    ATTENTIONS,
    COEFFICIENT_RANGE,
    CONSTRAINT_TARGET,
    DEFAULT_BASE_RESOLUTION,
    GEOMETRIES,
    MIN_RESOLUTION,
    PAPER_ALPHA,
    PAPER_BETA,
    PAPER_GAMMA,
    PHI_RANGE,
    V2,
    VARIANTS,
)
from effnet.base.text import si
from effnet.training.devices import check_memory
from views.prefill import CUSTOM_MODE, OFFICIAL_MODE, TABS
from views.widgets import block_widgets, chart, linked_number

OTHER_SCALING, OTHER_BLOCK = "another variant or scaling method", "A with another attention"


def compared(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The compare table as text ("A → B" where they differ) and its style (differences in bold on amber)."""
    def cell(measure: str, pair: tuple | None) -> str:
        if pair is None:
            return ""
        a, b = (si(v) if measure in ("params", "MACs") else f"{v:,}" for v in pair)
        if measure == "output":
            a, b = f"{pair[0]}×{pair[0]}", f"{pair[1]}×{pair[1]}"
        return a if pair[0] == pair[1] else f"{a} → {b}"

    text = pd.DataFrame([{k: v if k == "stage" else cell(k, v) for k, v in r.items()} for r in rows]).set_index("stage")
    style = pd.DataFrame([{k: "background-color: #ffe08a; font-weight: bold" if v is not None and v[0] != v[1]
                           else "" for k, v in r.items() if k != "stage"} for r in rows], index=text.index)
    return text, style


st.title("Compound scaling explorer")
st.caption("Every number here is computed analytically from the spec: no model is built, so each move is instant "
           "(a conventional network in the Compare tab is counted once; the usual ones ship counted).")

controls, main = st.columns([1, 2.2], gap="large")
with controls:
    mode = st.radio("Model", [OFFICIAL_MODE, CUSTOM_MODE], horizontal=True, key="mode")
    if mode == OFFICIAL_MODE:
        # Streamlit forgets a widget's value on a run that does not draw it (Custom mode): kept beside it, B3 is
        # still B3 after a look at Custom and back.
        st.session_state.setdefault("variant", st.session_state.get("variant_kept", "B0"))
        variant = st.select_slider("Variant", options=[v.upper() for v in VARIANTS], key="variant",
                                   help="B0-B7: compound-scaled from B0. V2-S/M/L: EfficientNetV2, its own tables "
                                        "(Fused-MBConv in the first stages).")
        st.session_state["variant_kept"] = variant
    else:
        phi = linked_number("φ (compound coefficient)", "phi", PHI_RANGE[0], PHI_RANGE[1], 0.1, 1.0,
                            help="Negative φ gives models smaller than B0, handy for CPU demos.")
        alpha = linked_number("α (depth base)", "alpha", *COEFFICIENT_RANGE, 0.01, PAPER_ALPHA)
        beta = linked_number("β (width base)", "beta", *COEFFICIENT_RANGE, 0.01, PAPER_BETA)
        gamma = linked_number("γ (resolution base)", "gamma", *COEFFICIENT_RANGE, 0.01, PAPER_GAMMA)
    geometry = st.radio("Geometry", GEOMETRIES, index=1, horizontal=True, key="geometry",
                        help="imagenet: the paper's (stride 32, 224 px). cifar: output stride 8, 32 px base, "
                             "so 32x32 images keep 4x4 final maps.")
    base_resolution = st.number_input("Base resolution at φ=0 (px)", MIN_RESOLUTION, 1024, DEFAULT_BASE_RESOLUTION[geometry],
                                      key=f"base_{geometry}")
    num_classes = st.number_input("Classes", 1, 100_000, 100, key="classes")
    batch = st.number_input("Batch size (for the memory estimate)", 1, 4096, 128, key="batch")
    table = V2[variant.lower()].stages if mode == OFFICIAL_MODE and variant.lower() in V2 else None
    st.markdown("**Block**")
    block = block_widgets("block", len(table) if table else 7, sum(s.fused for s in table) if table else 0)

try:
    common = dict(geometry=geometry, num_classes=int(num_classes), base_resolution=int(base_resolution))
    if mode == OFFICIAL_MODE:
        spec = ScalingSpec.official(variant.lower(), **common, **block.fields())
    else:
        spec = ScalingSpec(phi=phi, alpha=alpha, beta=beta, gamma=gamma, **common, **block.fields())
    card = model_card(spec)
except ValueError as exc:
    main.error(f"This spec cannot be built: {exc}")
    st.stop()

with main:
    st.subheader(spec.name)
    # Three tiles a row: at 1280x720 four tiles cut their labels and values off.
    row1 = st.columns(3)
    row1[0].metric("Depth multiplier", f"×{spec.depth_mult:.3f}", help="d = α^φ: how many more blocks per stage")
    row1[1].metric("Width multiplier", f"×{spec.width_mult:.3f}", help="w = β^φ: channels per layer")
    row1[2].metric("Resolution", f"{spec.resolution} px", help=f"r = γ^φ = ×{spec.resolution_mult:.3f} of "
                   f"{spec.base} px, rounded to the nearest pixel")
    row2 = st.columns(3)
    row2[0].metric("Parameters", si(card.params))
    row2[1].metric("MACs (FLOPs)", si(card.macs),
                   help='Multiply-adds for one image: what the paper calls "FLOPs".')
    row2[2].metric("Final feature map", f"{card.final_map}×{card.final_map}")
    row3 = st.columns(3)
    if spec.is_v2:  # not on B0's scaling line: its cost against B0 is the comparison that means something
        row3[0].metric("FLOPs vs B0", f"×{card.flops_ratio:.2f}", help="Actual multiply-adds against B0 in this "
                       "geometry: V2 is sized by its own table, not by φ.")
        row3[1].metric("Stages", f"{len(spec.stages)} ({sum(s.fused for s in spec.stages)} fused)")
    else:
        row3[0].metric("FLOPs vs φ=0", f"×{card.flops_ratio:.2f}",
                       help="Actual multiply-adds against φ=0, from the rounded channels, repeats and resolution.")
        row3[1].metric("Formula said", f"×{spec.predicted_flops_ratio:.2f}",
                       help="d·w²·r² from the unrounded multipliers: what compound scaling promises.")
    need = card.train_memory_bytes(int(batch))
    row3[2].metric("Training memory", f"{need / 1024**3:.2f} GiB",
                   help=f"Estimate at batch {batch}: fp32 activations kept for backward plus weights, gradients and "
                        "momentum.")
    try:
        check_memory(card, int(batch), "auto")
    except ValueError as exc:
        st.warning(f"The Train page will refuse this model here: {str(exc).split(': ', 1)[1]}")
    if not spec.is_v2:
        st.markdown(f"**Constraint** α·β²·γ² = **{spec.constraint:.3f}**"
                    + ("" if spec.variant is None else " (of the formula; the released variant sets its own "
                       "multipliers)"))
    if spec.constraint_off and not spec.is_v2:
        st.warning(f"α·β²·γ² = {spec.constraint:.2f} is far from {CONSTRAINT_TARGET:g}: each unit of φ multiplies "
                   f"the FLOPs by about {spec.constraint:.2f} instead of the paper's {CONSTRAINT_TARGET:g}.")
    if spec.is_v2:
        fused, own = sum(s.fused for s in spec.stages), sum(s.fused for s in V2[spec.variant].stages)
        st.info(f"{spec.name} is EfficientNetV2 (Tan & Le, 2021): torchvision's table, whose first {own} stages are "
                "Fused-MBConv (depthwise convolutions are slow on accelerators), without attention there"
                + ("" if spec.fused_stages is None else f"; here {fused} are") + ". S, M and L were sized by hand, "
                "not by φ.")
    elif spec.variant not in (None, "b0"):
        st.info(f"{spec.name} as released: depth ×{spec.depth_mult:g}, width ×{spec.width_mult:g}, "
                f"{spec.resolution} px. The formula α^φ, β^φ, γ^φ at φ={spec.phi:g} would give depth "
                f"×{spec.formula_depth_mult:.2f}, width ×{spec.formula_width_mult:.2f}, {spec.formula_resolution} px: "
                "the released models do not follow the formula exactly.")

with st.expander("The formulas", expanded=False):
    st.latex(r"d = \alpha^{\phi},\quad w = \beta^{\phi},\quad r = \gamma^{\phi}")
    st.markdown("One coefficient φ scales all three dimensions together: depth (blocks per stage), width "
                "(channels) and input resolution, each by its own base.")
    st.latex(r"\alpha \cdot \beta^{2} \cdot \gamma^{2} \approx 2,\qquad \alpha, \beta, \gamma \ge 1")
    st.markdown("The constraint the paper imposes during its grid search at φ=1 (it found "
                f"α={PAPER_ALPHA:g}, β={PAPER_BETA:g}, γ={PAPER_GAMMA:g}).")
    st.latex(r"\mathrm{FLOPs} \propto d \cdot w^{2} \cdot r^{2} \;\Rightarrow\; "
             r"\mathrm{FLOPs}(\phi) \approx (\alpha\beta^{2}\gamma^{2})^{\phi} \approx 2^{\phi}")
    st.markdown("Cost grows linearly with depth but quadratically with width and resolution, so with the "
                "constraint each step of φ roughly doubles the FLOPs.")

# Lazy tabs: only the open one runs, so a rerun builds one tab's figures, not four tabs' worth.
stages_tab, compare_tab, curves_tab, methods_tab, speed_tab = st.tabs(
    list(TABS), key="explorer_tab", on_change="rerun")

with stages_tab:
    if stages_tab.open:
        reference = None if spec.is_v2 else model_card(spec.baseline)  # a V2 has its own stages, not B0's
        same = reference is None or reference.stages == card.stages
        chart(network_picture(card, None if same else reference), "network",
              note="Each block is a stage: wider means more channels, taller means larger feature maps, ×n the "
                   "repeats; the dotted outline is B0. Look for how φ grows all three at once.")
        table = pd.DataFrame([{
            "stage": r.name, "operator": r.operator, "kernel": r.kernel, "stride": r.stride, "in": r.in_channels,
            "out": r.out_channels, "repeats": r.repeats, "output": f"{r.output_size}×{r.output_size}",
            "params": r.params, "MACs": r.macs} for r in card.stages])
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={"params": st.column_config.NumberColumn(format="localized"),
                                    "MACs": st.column_config.NumberColumn(format="localized")})

with compare_tab:
    if compare_tab.open:
        against = st.radio("B", [OTHER_SCALING, OTHER_BLOCK], horizontal=True, key="cmp_kind")
        if against == OTHER_BLOCK:
            cols = st.columns([1, 2])
            other_attention = cols[0].selectbox("B: attention", list(ATTENTIONS), format_func=ATTENTIONS.get,
                                                index=0 if spec.attention != "se" else 1, key="cmp_attention")
            label = f"A with {ATTENTIONS[other_attention]} in every MBConv stage"
        else:
            cols = st.columns([1, 1, 2])
            other_variant = cols[0].selectbox("B: variant", [v.upper() for v in OFFICIAL], index=3, key="cmp_variant")
            other_method = cols[1].selectbox("B: scaled by", list(METHOD_NAMES), format_func=METHOD_NAMES.get,
                                             index=1, key="cmp_method")
            label = (f"{other_variant} scaled by {METHOD_NAMES[other_method]} at {other_variant}'s actual "
                     "multiply-adds (as the Train page and the studies scale)")
        cols[-1].markdown(f"**A** = {spec.name} (the spec on the left), **B** = {label}. Cells where B differs "
                          "from A are highlighted.")
        try:
            if against == OTHER_BLOCK:
                other = spec.replace(attention=other_attention)
            else:  # B0-B7 share A's block, unless A is a V2 (its per-stage blocks follow its own table)
                other = at_equal_macs(ScalingSpec.official(other_variant.lower(), **common,
                                                           **({} if spec.is_v2 else block.fields())), other_method)
            if len(model_card(other).stages) != len(card.stages):
                raise ValueError(f"{spec.name} has {len(spec.stages)} stages and {other.name} "
                                 f"{len(other.stages)}: stage by stage needs two specs of one table; compare A "
                                 "with another attention, or B0-B7 from a B-variant or custom φ")
            rows = side_by_side(card, model_card(other))
        except ValueError as exc:
            st.error(f"B cannot be compared here: {exc}")
        else:
            text, style = compared(rows)
            st.dataframe(text.style.apply(lambda _: style, axis=None), width="stretch", height=390)
            st.caption("Per stage: the side of its output feature map, repeats, output channels, params and "
                       "multiply-adds; \"A → B\" where B differs. Look for where each spec spends its budget: compound "
                       "grows every column a little, one dimension alone grows one column a lot; another attention "
                       "changes only params and MACs, the shapes stay.")
        st.markdown("**Or against a conventional network** (torchvision's, counted once with FlopCounterMode): "
                    "its own stages, and its totals beside A's.")
        baseline = st.selectbox("Network", list(BASELINES), format_func=lambda m: BASELINES[m][0], key="cmp_baseline")
        other = BaselineSpec(model=baseline, geometry=geometry, num_classes=int(num_classes),
                             base_resolution=int(base_resolution))
        try:
            if is_counted(other):  # shipped with the lab, or counted here before: instant, no torch
                other_card = specs.card(other)
            else:
                with st.spinner(f"Counting {BASELINES[baseline][0]} at {other.resolution} px once (building it "
                                "in torch and running FlopCounterMode: about 10 s the first time, then instant)"):
                    other_card = specs.card(other)
        except ValueError as exc:
            st.error(f"{BASELINES[baseline][0]} cannot be built here: {exc}")
        else:
            tiles = st.columns(3)
            tiles[0].metric(f"{BASELINES[baseline][0]} params", si(other_card.params),
                            f"×{other_card.params / card.params:.1f} of A", delta_color="off")
            tiles[1].metric("MACs", si(other_card.macs), f"×{other_card.macs / card.macs:.1f} of A", delta_color="off")
            tiles[2].metric("Final feature map", f"{other_card.final_map}×{other_card.final_map}")
            st.dataframe(pd.DataFrame([{"stage": r.name, "operator": r.operator, "output": f"{r.output_size}×"
                                        f"{r.output_size}", "params": si(r.params), "MACs": si(r.macs)}
                                       for r in other_card.stages]), hide_index=True, width="stretch", height=300)

with curves_tab:
    if curves_tab.open:
        # One chart per row, legends under them: side by side at 1280 px, a legend left 60 px of plot.
        chart(scaling_sweep(spec, "params"), "sweep_params",
              note="Parameters at φ = 0..7 with your α, β, γ (solid) and the released B0-B7 (dashed), log scale. "
                   "Look for: a straight line means every step of φ multiplies the size by the same factor.")
        chart(scaling_sweep(spec, "macs"), "sweep_macs",
              note="Multiply-adds per image, same runs of φ. Look for: with α·β²·γ² ≈ 2 each step of φ about "
                   "doubles them; rounding makes the real steps uneven.")
        st.markdown("**Released B0-B7 vs the formula** (with the coefficients above): the released width, depth "
                    "and resolution were rounded and hand-tuned, so they are not exactly α^φ, β^φ, γ^φ.")
        st.dataframe(pd.DataFrame(official_vs_formula(spec)), hide_index=True, width="stretch")

with methods_tab:
    if methods_tab.open:
        st.markdown(f"The same *actual* multiply-adds as this spec ({si(card.macs)}, ×{card.flops_ratio:.2f} of "
                    "φ=0) reached by scaling one dimension alone, each solved against the model card (the nominal "
                    "2^φ is not what rounding produces). The paper's Figure 3 and the seed study compare these.")
        st.dataframe(pd.DataFrame(scaling_methods(spec)), hide_index=True, width="stretch")

with speed_tab:
    st.markdown("Multiply-adds are not speed: memory traffic, depthwise convolutions and the hardware decide. "
                "Time this model here (one image, and a training step).")
    measure_batch = st.number_input("Training batch to time", 1, 512, 16, key="measure_batch")
    # The promise goes above the button: a click scrolls the button just into view, often at the bottom edge of a
    # 720 px projector, so a spinner under it would sit below the screen (measured: y 701-727 in CI's Chromium).
    promise = st.container()
    if st.button("Measure on this machine", key="measure"):
        from effnet.training.measure import measure_estimate_s, measure_speed

        estimate = measure_estimate_s(spec, int(measure_batch))
        speed = None
        with promise, st.spinner(f"Timing on this machine: about {estimate:.0f} s (one measurement at a time "
                                 "on this server)..."):
            try:
                speed = measure_speed(spec, int(measure_batch))
            except ValueError as exc:
                st.error(str(exc))
        if speed is not None:
            cols = st.columns(3)
            cols[0].metric("Inference, 1 image", f"{speed.latency_ms:.1f} ms")
            cols[1].metric(f"Training, batch {speed.batch_size}", f"{speed.train_images_per_s:.1f} img/s")
            cols[2].metric("MACs per image", si(card.macs))
            st.caption(f"Measured on {speed.device}.")
