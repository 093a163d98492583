"""Plotly figures for the app: built here from the core's numbers, laid out by the pages.

Every chart uses the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies) and text of at least 14 px, since the lab is shown on projectors; pages show them
with Streamlit's theme off so these sizes hold.

Speed, measured (bench/classroom_load.py, profiled): a figure on plotly's "plotly_white" template costs
about 35 ms of server CPU (the template is validated and deep-copied into every figure), the same look
set by ``update_layout`` calls about 29 ms, and a small registered template of our own about 5 ms. Figures that depend only on a spec are cached
(``lru_cache``): the explorer rebuilds nothing when a class looks at the same B0-B7. Callers must
not modify a figure they get.
"""

from __future__ import annotations

import functools
import html
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import plotly.graph_objects as go
import plotly.io as pio

from effnet.arch.card import ModelCard, model_card, official_cards, sweep
from effnet.arch.scaling import ScalingSpec
from effnet.base.text import si

# Okabe & Ito (2008): blue, orange, bluish green, vermillion, reddish purple, sky blue, yellow, black.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
DASHES = ["solid", "dash", "dot", "dashdot"]
FONT = {"size": 16, "color": "#222222"}
_AXIS = {"gridcolor": "#dddddd", "linecolor": "#888888", "zeroline": False, "tickfont": {"size": 15},
         "title": {"font": {"size": 16}}, "automargin": True}
# A small template of our own, registered once: plotly deep-copies a figure's template into it, so a
# template of a few keys costs ~4 ms per figure where "plotly_white" (every trace type's defaults) costs ~30.
TEMPLATE = "effnet-lab"
pio.templates[TEMPLATE] = go.layout.Template(layout={
    "font": FONT, "colorway": PALETTE, "paper_bgcolor": "white", "plot_bgcolor": "white", "xaxis": _AXIS,
    "yaxis": _AXIS, "margin": {"l": 70, "r": 30, "t": 60, "b": 60}, "legend": {"font": {"size": 15}},
    "hoverlabel": {"font": {"size": 15}}, "title": {"font": {"size": 18}}})


def _text(value: object) -> str:
    """A label from a user (a run's name, a class folder's) as plotly text: plotly reads a few HTML tags in text,
    links among them, so ``<`` and ``&`` are escaped and the label shows as typed."""
    return html.escape(str(value), quote=False)


def _layout(fig: go.Figure, title: str, **kwargs: Any) -> go.Figure:
    """The lab's look (the registered template) and a title."""
    fig.update_layout(template=TEMPLATE, title_text=title, **kwargs)
    return fig


F = TypeVar("F", bound=Callable[..., go.Figure])
MEMO_SIZE = 256


def _memo(build: F) -> F:
    """Keep the last ``MEMO_SIZE`` figures ``build`` made, keyed by its arguments as JSON (data and specs alike)."""
    cache: OrderedDict[str, go.Figure] = OrderedDict()
    lock = threading.Lock()

    @functools.wraps(build)
    def cached(*args: Any, **kwargs: Any) -> go.Figure:
        key = json.dumps([args, kwargs], default=repr, sort_keys=True)
        with lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        figure = build(*args, **kwargs)
        with lock:
            cache[key] = figure
            if len(cache) > MEMO_SIZE:
                cache.popitem(last=False)
        return figure

    return cached  # type: ignore[return-value]


def _log_axis(values: Sequence[float] = ()) -> dict[str, Any]:
    """A log axis readable from afar: over two decades or more, labels at powers of ten only (1M, 10M, ...; no
    unlabeled minor digits); within less, plotly's own labelled ticks. ``values`` (the data) also get half a
    decade of room on each side, so the text beside the outermost points is not cut off."""
    axis: dict[str, Any] = {"type": "log", "exponentformat": "SI"}
    positive = [v for v in values if v > 0]
    if not positive or max(positive) / min(positive) >= 100:
        axis["dtick"] = 1
        if positive:
            axis["range"] = [math.log10(min(positive)) - 0.5, math.log10(max(positive)) + 0.5]
        return axis
    low, high = math.log10(min(positive)) - 0.5, math.log10(max(positive)) + 0.5
    ticks = [m * 10**e for e in range(math.floor(low), math.ceil(high) + 1) for m in (1, 2, 5)
             if low <= math.log10(m * 10**e) <= high]
    return {**axis, "range": [low, high], "tickvals": ticks, "ticktext": [si(t, decimals=None) for t in ticks]}


@_memo
def scaling_sweep(spec: ScalingSpec, metric: str) -> go.Figure:
    """``metric`` ("params" or "macs") for phi = 0..7 under the spec's coefficients, beside B0-B7."""
    phis = list(range(8))
    label = {"params": "parameters", "macs": "multiply-adds (paper's FLOPs)"}[metric]
    formula = sweep(spec, phis)
    official = [getattr(c, metric) for c in official_cards(spec)]
    fig = go.Figure()
    fig.add_scatter(x=[c.spec.phi for c in formula], y=[getattr(c, metric) for c in formula], mode="lines+markers", name=f"formula (α={spec.alpha:g}, β={spec.beta:g}, "
                    f"γ={spec.gamma:g})", marker={"symbol": "circle", "size": 10})
    fig.add_scatter(x=phis, y=official, mode="lines+markers", name="official B0-B7",
                    marker={"symbol": "diamond", "size": 11}, line={"dash": "dash"})
    if spec.variant is None and -0.5 <= spec.phi <= 7.5:
        fig.add_scatter(x=[spec.phi], y=[getattr(model_card(spec), metric)], mode="markers",
                        name="your spec", marker={"symbol": "star", "size": 18, "color": PALETTE[3]})
    values = [getattr(c, metric) for c in formula] + official
    _layout(fig, f"{label.capitalize()} vs φ (log scale)", height=460,
            legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
    fig.update_yaxes(title=label, **_log_axis(values))
    fig.update_xaxes(title="φ (official: the B-number)", dtick=1, range=[-0.5, 7.5])
    return fig


@_memo
def network_picture(card: ModelCard, reference: ModelCard | None = None) -> go.Figure:
    """Stages as blocks: block height follows the output resolution, width the channels, label the repeats.

    A faint outline of ``reference`` (B0 in the same geometry, with as many stages) shows what scaling changed;
    Fused-MBConv stages are orange.
    """
    fig = go.Figure()
    cards = [(reference, "rgba(0,0,0,0)", "#999999", "dot")] if reference is not None else []
    cards.append((card, "rgba(0,114,178,0.55)", PALETTE[0], "solid"))
    top_size = max(r.output_size for c, *_ in cards for r in c.stages)
    top_channels = max(r.out_channels for c, *_ in cards for r in c.stages)
    positions = [1.3 * i for i in range(len(card.stages))]
    x = 1.3 * len(card.stages)
    shapes = [{"type": "rect", "x0": pos, "x1": pos + _box_width(row, top_channels),
               "y0": -_box_height(row, top_size) / 2, "y1": _box_height(row, top_size) / 2,
               "fillcolor": FUSED_FILL if c is card and row.operator.startswith("Fused") else fill,
               "line": {"color": edge, "dash": dash, "width": 2}}
              for c, fill, edge, dash in cards for pos, row in zip(positions, c.stages, strict=True)]
    notes = [{"x": pos + 0.5, "y": -0.55, "yanchor": "top", "showarrow": False, "font": {"size": 15},
              "text": f"{row.name}<br>{row.out_channels} ch<br>{row.output_size}×{row.output_size}<br>×{row.repeats}"}
             for pos, row in zip(positions, card.stages, strict=True)]
    fig.update_layout(shapes=shapes, annotations=notes)  # one validation pass, not one per block
    fig.update_xaxes(visible=False, range=[-0.2, x + 0.2])
    fig.update_yaxes(visible=False, range=[-1.05, 0.55])
    note = " (dotted: B0)" if reference is not None else ""
    if any(r.operator.startswith("Fused") for r in card.stages):
        note += " (orange: Fused-MBConv)"
    return _layout(fig, f"{card.spec.name}: block width = channels, height = resolution{note}", height=420,
                   showlegend=False)


FUSED_FILL = "rgba(230,159,0,0.6)"


def _box_width(row: Any, top_channels: int) -> float:
    return 0.25 + 0.95 * math.sqrt(row.out_channels / top_channels)


def _box_height(row: Any, top_size: int) -> float:
    return 0.15 + 0.85 * row.output_size / top_size


def _x(row: dict[str, Any]) -> float:
    """Where a row sits on the epoch axis: an epoch's row at its end (1, 2, ...), a point within an epoch (live.jsonl)
    at its fraction (step 10 of 40 in epoch 1: 0.25)."""
    return row["epoch"] - 1 + row["step"] / row["steps"] if "steps" in row else float(row["epoch"])


# Above this many points a chart labels none of them (labels of a room's runs piled into a blur and sat on other
# runs' markers): each run is then named on hover, and its group in the legend.
LABELLED_POINTS = 8
SYMBOLS = ["circle", "diamond", "square", "triangle-up", "x", "star", "hexagon", "cross"]
# The legend under the plot, in the figure's own space below the x axis title (never on it), growing the figure.
LEGEND_BELOW = {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0, "font": {"size": 14}}


def _legend_height(names: Sequence[str], width_px: int) -> int:
    """Pixels a legend of ``names`` needs under a chart ``width_px`` wide: as many rows as if every entry were as
    wide as the widest (a line and symbol, then 14-px text at about 8 px a character), 26 px each. Plotly cannot
    grow a figure for its legend, so the figure reserves this much and the legend is never cut off."""
    if not names:
        return 0
    widest = 50 + 8 * max(len(n) for n in names)
    return 26 * math.ceil(len(names) / max(1, width_px // widest)) + 24


@_memo
def training_curves(runs: Sequence[tuple[str, list[dict[str, Any]]]], metric: str = "top1",
                    width_px: int = 400) -> go.Figure:
    """Curves of several runs overlaid: colour (and past eight runs, marker) = run, line style = train/val/test.
    Rows may be epochs (metrics.jsonl) or points within an epoch (live.jsonl), so a run draws from its first minute.
    One legend entry per run (the line styles are the caption's), under the plot in room of its own, so 20 runs
    are all listed and none covers the axis (13 runs cut the legend after 4 and covered "epoch"). ``width_px``: about
    how wide the page shows it (400: half of a 1280-px page; 820: all of it), for the room its legend needs."""
    fig = go.Figure()
    splits = ["train", "val", "test"]
    for i, (label, rows) in enumerate(runs):
        colour, symbol = PALETTE[i % len(PALETTE)], SYMBOLS[i // len(PALETTE) % len(SYMBOLS)]
        first = True
        for j, split in enumerate(splits):
            key = f"{split}_{metric}" if not (metric == "loss" and split == "train") else "train_loss"
            points = sorted((_x(r), r[key]) for r in rows if r.get(key) is not None)
            if not points:
                continue
            fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                            name=_text(label), line={"color": colour, "dash": DASHES[j]},
                            marker={"size": 7, "symbol": symbol}, legendgroup=_text(label), showlegend=first,
                            hovertemplate=f"%{{fullData.name}} {split}<br>epoch %{{x:.2f}}: %{{y:.2f}}<extra></extra>")
            first = False
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title="top-1 (%)" if metric == "top1" else "cross-entropy loss")
    legend = _legend_height([label for label, _ in runs], width_px)
    return _layout(fig, "Top-1 accuracy per epoch" if metric == "top1" else "Loss per epoch", height=460 + legend,
                   legend=LEGEND_BELOW, margin={"b": 70 + legend})


def _pad_y(fig: go.Figure, values: Sequence[float]) -> None:
    """Room above and below the points so their text labels are not cut off."""
    if values:
        low, high = min(values), max(values)
        pad = max(1.0, 0.2 * (high - low))
        fig.update_yaxes(range=[low - pad, high + pad])
    fig.update_traces(cliponaxis=False)


EFFICIENTNET_SERIES = "EfficientNet"


@_memo
def accuracy_vs_size(points: Sequence[tuple[str, float, float, str, str]], size: str,
                     width_px: int = 400) -> go.Figure:
    """One point per run: (label, size, top-1, series, recipe). Runs are grouped by series (EfficientNet, or a
    baseline) and recipe (``RunResult.recipe``); an EfficientNet group of two or more is one line in order of size
    (the paper's Figure 1 shape), joined only within its recipe. Colours and symbols tell the groups apart; with
    more than ``LABELLED_POINTS`` points the runs are named on hover only. ``size``: "params" or "macs"."""
    axis = {"params": "parameters", "macs": "multiply-adds (paper's FLOPs)"}[size]
    fig = go.Figure()
    groups = sorted({(p[3], p[4]) for p in points}, key=lambda g: (g[0] != EFFICIENTNET_SERIES, g))
    recipes = {p[4] for p in points}
    names = {g: f"{g[0]} · {g[1]}" if len(recipes) > 1 else g[0] for g in groups}
    labelled = len(points) <= LABELLED_POINTS
    where = dict(zip(map(tuple, points), _alternating(points), strict=True))  # over all points: labels interleave
    for i, (name, recipe) in enumerate(groups):
        group = sorted((p for p in points if (p[3], p[4]) == (name, recipe)), key=lambda p: p[1])
        line = name == EFFICIENTNET_SERIES and len(group) > 1
        symbol = "circle" if name == EFFICIENTNET_SERIES else SYMBOLS[1 + i % (len(SYMBOLS) - 1)]
        fig.add_scatter(x=[p[1] for p in group], y=[p[2] for p in group], text=[_text(p[0]) for p in group],
                        mode=("lines+markers" if line else "markers") + ("+text" if labelled else ""),
                        textposition=[where[tuple(p)] for p in group] if labelled else None,
                        hovertemplate="%{text}<br>%{y:.2f}% at %{x:.3s}<extra></extra>",
                        marker={"size": 13, "color": PALETTE[i % len(PALETTE)], "symbol": symbol,
                                "line": {"width": 1, "color": "white"}},
                        line={"dash": DASHES[i // len(PALETTE) % len(DASHES)]},
                        textfont={"size": 14}, name=_text(names[(name, recipe)]))
    fig.update_xaxes(title=f"{axis} (log scale)", **_log_axis([p[1] for p in points]))
    fig.update_yaxes(title="test top-1 (%)")
    _pad_y(fig, [p[2] for p in points])
    legend = _legend_height(list(names.values()), width_px) if len(groups) > 1 else 0
    return _layout(fig, f"Accuracy vs {axis}", showlegend=len(groups) > 1, legend=LEGEND_BELOW, height=460 + legend,
                   margin={"b": 70 + legend})


# The families the study cites, labelled on Figure 1; every other torchvision model is a grey point.
CITED_FAMILIES = ("ResNet", "DenseNet", "MobileNet")


# Where a label may sit around its marker, in the order tried: plotly's textposition and the box's offset from the
# marker as (left, top) in units of the label's (width, height) plus a marker's radius.
_PLACES = [("top center", -0.5, -1), ("bottom center", -0.5, 0), ("middle right", 0, -0.5), ("middle left", -1, -0.5),
           ("top right", 0, -1), ("top left", -1, -1), ("bottom right", 0, 0), ("bottom left", -1, 0)]


def placed_labels(points: Sequence[tuple[str, float, float]], x_range: tuple[float, float],
                  y_range: tuple[float, float], plot_px: tuple[int, int]) -> list[str | tuple[int, int]]:
    """Where each (label, x, y) point's label goes, so that no two labels and no label and marker overlap: each
    label in turn takes the first free place inside the plot, beside its marker (a plotly textposition), else a
    little further off with a leader line (an (ax, ay) offset in px for an annotation), else "none" (named on hover
    only). ``x_range``, ``y_range``: the axes' ranges (x as log10); ``plot_px``: the plotting area's width and
    height. A 14-px label is taken as 8 px a character and 20 px tall, 7 px (a marker's radius) from its point."""
    (x0, x1), (y0, y1), (width, height) = x_range, y_range, plot_px

    def at(x: float, y: float) -> tuple[float, float]:
        return (math.log10(x) - x0) / (x1 - x0) * width, (y1 - y) / (y1 - y0) * height

    marks = [at(x, y) for _, x, y in points]
    taken = [(mx - 6, my - 6, mx + 6, my + 6) for mx, my in marks]

    def free(box: tuple[float, float, float, float]) -> bool:
        inside = box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
        return inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken)

    positions: list[str | tuple[int, int]] = []
    for (label, _, _), (mx, my) in zip(points, marks, strict=True):
        w, h, r = 8 * len(label), 20, 7
        beside = [(name, mx + fx * w + (r if fx == 0 else -r if fx == -1 else 0),
                   my + fy * h + (r if fy == 0 else -r if fy == -1 else 0)) for name, fx, fy in _PLACES]
        # Further off, centred on (mx + ax, my + ay), joined to the point by a line.
        off = [((ax, ay), mx + ax - w / 2, my + ay - h / 2) for dist in (45, 70)
               for ax, ay in ((0, -dist), (0, dist), (dist + w // 2, 0), (-dist - w // 2, 0), (dist, -dist),
                              (-dist, -dist), (dist, dist), (-dist, dist))]
        chosen: str | tuple[int, int] = "none"
        for where, left, top in [*beside, *off]:
            if free((left, top, left + w, top + h)):
                chosen = where
                taken.append((left, top, left + w, top + h))
                break
        positions.append(chosen)
    return positions


@_memo
def imagenet_figure1(models: Sequence[Any], width_px: int = 820) -> go.Figure:
    """The paper's Figure 1 from torchvision's measurements (``effnet.arch.zoo``): ImageNet top-1 vs parameters.
    Its labels are placed so none collides (``placed_labels``; resnet18/34 and densenet121/161 printed over each
    other), at a height that leaves its caption on a 720-px screen; ``width_px``: about how wide the page shows it."""
    from effnet.arch.zoo import EFFICIENTNET

    height, margin = 470, {"l": 70, "r": 30, "t": 50, "b": 110}
    fig = go.Figure()
    others = [m for m in models if m.family != EFFICIENTNET and m.family not in CITED_FAMILIES]
    fig.add_scatter(x=[m.params for m in others], y=[m.top1 for m in others], mode="markers",
                    text=[m.name for m in others], hovertemplate="%{text}: %{y:.1f}%, %{x:.3s} params<extra></extra>",
                    marker={"size": 8, "color": "#bbbbbb"}, name="other torchvision models")
    eff = [m for m in models if m.family == EFFICIENTNET]
    cited = [m for fam in CITED_FAMILIES for m in models if m.family == fam]
    short = {m.name: m.name.removeprefix("efficientnet_").upper() for m in eff} | {m.name: m.name for m in cited}
    x_axis = _log_axis([m.params for m in models])
    top1 = [m.top1 for m in models]
    y_range = (min(top1) - 2, max(top1) + 2)
    # EfficientNet's labels first: they are the figure's point.
    order = [*eff, *cited]
    where = dict(zip((m.name for m in order), placed_labels(
        [(short[m.name], m.params, m.top1) for m in order], tuple(x_axis["range"]), y_range,
        (width_px - margin["l"] - margin["r"], height - margin["t"] - margin["b"])), strict=True))

    def labelled(group: list[Any]) -> dict[str, Any]:
        beside = [isinstance(where[m.name], str) and where[m.name] != "none" for m in group]
        return {"text": [short[m.name] if b else "" for m, b in zip(group, beside, strict=True)],
                "textposition": [where[m.name] if b else "top center" for m, b in zip(group, beside, strict=True)],
                "customdata": [m.name for m in group], "textfont": {"size": 14},
                "hovertemplate": "%{customdata}: %{y:.1f}%, %{x:.3s} params<extra></extra>"}

    for m in order:  # labels placed further off, with a line to their point
        if isinstance(where[m.name], tuple):
            ax, ay = where[m.name]
            fig.add_annotation(x=math.log10(m.params), y=m.top1, text=short[m.name], ax=ax, ay=ay, showarrow=True,
                               arrowhead=0, arrowwidth=1, arrowcolor="#888888", font={"size": 14})

    for i, fam in enumerate(CITED_FAMILIES, start=1):
        group = [m for m in cited if m.family == fam]
        fig.add_scatter(x=[m.params for m in group], y=[m.top1 for m in group], mode="markers+text",
                        marker={"size": 11, "color": PALETTE[i], "symbol": "diamond"}, name=fam, **labelled(group))
    fig.add_scatter(x=[m.params for m in eff], y=[m.top1 for m in eff], mode="lines+markers+text",
                    marker={"size": 12, "color": PALETTE[0]}, line={"width": 3}, name="EfficientNet B0-B7",
                    **labelled(eff))
    fig.update_xaxes(title="parameters (log scale)", **x_axis)
    fig.update_yaxes(title="ImageNet top-1 (%)", range=list(y_range))
    return _layout(fig, "ImageNet top-1 vs parameters (torchvision's measurements)", height=height, margin=margin,
                   legend=LEGEND_BELOW)


@_memo
def _alternating(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Labels above and below in turn along x, so neighbours' labels do not print over each other."""
    order = sorted(range(len(points)), key=lambda i: points[i][1])
    positions = [""] * len(points)
    last = len(points) - 1
    for rank, i in enumerate(order):
        # The outermost labels grow inwards, so a long run label is not cut off at the plot's edge.
        side = "right" if rank == 0 and last else "left" if rank == last and last else "center"
        positions[i] = f"{('top', 'bottom')[rank % 2]} {side}"
    return positions


def val_vs_test(points: Sequence[tuple[str, float, float]], r: float | None) -> go.Figure:
    """Validation vs test top-1 per run, with the y = x line and the correlation coefficient."""
    fig = go.Figure()
    values = [v for p in points for v in p[1:]]
    low, high = (min(values) - 1, max(values) + 1) if values else (0, 100)
    fig.add_scatter(x=[low, high], y=[low, high], mode="lines", name="y = x",
                    line={"color": "#777777", "dash": "dash"})
    fig.add_scatter(x=[p[1] for p in points], y=[p[2] for p in points], text=[_text(p[0]) for p in points],
                    mode="markers+text", textposition=_alternating(points), marker={"size": 13, "color": PALETTE[1]},
                    textfont={"size": 14}, name="runs")
    _pad_y(fig, values)
    fig.update_xaxes(title="validation top-1 (%)")
    fig.update_yaxes(title="test top-1 (%)")
    title = "Validation vs test" + (f" (r = {r:.3f})" if r is not None else " (r needs three runs that differ)")
    return _layout(fig, title)


@_memo
def confusion_heatmap(matrix: Sequence[Sequence[int]], rows: Sequence[str], columns: Sequence[str],
                      title: str) -> go.Figure:
    """Counts as a heatmap (cividis: readable with colour-vision deficiencies); rows true, columns predicted."""
    fig = go.Figure(go.Heatmap(z=matrix, x=[_text(c) for c in columns], y=[_text(r) for r in rows], colorscale="Cividis",
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"))
    fig.update_xaxes(title="predicted", tickangle=45)
    fig.update_yaxes(title="true", autorange="reversed")
    return _layout(fig, title, height=650)


METHOD_NAMES = {"compound": "compound", "depth": "depth only", "width": "width only", "resolution": "resolution only"}


@_memo
def methods_comparison(points: Sequence[tuple[str, float, float]], metric: str) -> go.Figure:
    """The paper's Figure 8 style: top-1 against multiply-adds, one line per scaling method.

    ``points``: (method, MACs, top-1) per run; ``metric`` names the y values ("test" or "validation").
    """
    fig = go.Figure()
    # Compound is drawn last, so it stays on top where its point coincides with a single dimension's.
    for i, method in sorted(enumerate(METHOD_NAMES), key=lambda im: im[1] == "compound"):
        mine = sorted((p for p in points if p[0] == method), key=lambda p: p[1])
        if mine:
            compound = method == "compound"
            fig.add_scatter(x=[p[1] for p in mine], y=[p[2] for p in mine], mode="lines+markers",
                            name=METHOD_NAMES[method],
                            marker={"size": 16 if compound else 11, "symbol": "diamond" if compound else "circle",
                                    "line": {"width": 2, "color": "#222222"} if compound else {"width": 0}},
                            line={"color": PALETTE[i], "dash": DASHES[i], "width": 4 if compound else 2})
    fig.update_xaxes(title="multiply-adds per image (log scale)", **_log_axis([p[1] for p in points]))
    fig.update_yaxes(title=f"{metric} top-1 (%)")
    _pad_y(fig, [p[2] for p in points])
    return _layout(fig, "Scaling methods at equal cost", legend={"orientation": "h", "y": -0.25})


@_memo
def grid_search(points: Sequence[tuple[float, float, float, float]], paper: tuple[float, float, float],
                best: tuple[float, float, float] | None) -> go.Figure:
    """Validation top-1 over the grid: beta (x) against gamma (y), colour = accuracy, alpha printed at each point.

    ``points``: (alpha, beta, gamma, val top-1); alpha follows from the constraint, so two axes show it all.
    """
    fig = go.Figure()
    fig.add_scatter(x=[p[1] for p in points], y=[p[2] for p in points], mode="markers+text",
                    text=[f"α={p[0]:g}" for p in points], textposition="top center", textfont={"size": 14},
                    marker={"size": 22, "color": [p[3] for p in points], "colorscale": "Viridis", "showscale": True,
                            "colorbar": {"title": {"text": "val top-1 (%)"}, "tickfont": {"size": 14}}},
                    name="grid points", hovertemplate="α=%{text}<br>β=%{x}<br>γ=%{y}<br>%{marker.color:.2f}%"
                                                      "<extra></extra>")
    fig.add_scatter(x=[paper[1]], y=[paper[2]], mode="markers", name=f"paper (α={paper[0]:g}, β={paper[1]:g}, "
                    f"γ={paper[2]:g})", marker={"symbol": "circle-open", "size": 34, "line": {"width": 3},
                                               "color": PALETTE[3]})
    if best is not None:
        fig.add_scatter(x=[best[1]], y=[best[2]], mode="markers", name=f"best by validation (α={best[0]:g}, "
                        f"β={best[1]:g}, γ={best[2]:g})", marker={"symbol": "star", "size": 26, "color": PALETTE[1],
                                                                   "line": {"width": 1, "color": "#222222"}})
    fig.update_xaxes(title="β (width base)")
    fig.update_yaxes(title="γ (resolution base)")
    fig.update_traces(cliponaxis=False)
    return _layout(fig, "Grid search at φ=1 under α·β²·γ² ≈ 2", legend={"orientation": "h", "y": -0.25})


@_memo
def compression(points: Sequence[tuple[str, float, float]], x_title: str) -> go.Figure:
    """Test top-1 against a cost (size or latency), one labelled point per compressed variant."""
    fig = go.Figure()
    for i, (name, x, y) in enumerate(points):
        fig.add_scatter(x=[x], y=[y], text=[_text(name)], mode="markers+text", textposition=_alternating(points)[i],
                        marker={"size": 15, "color": PALETTE[i % len(PALETTE)],
                                "symbol": "diamond" if name.startswith("fp32") else "circle"},
                        textfont={"size": 14}, name=_text(name), showlegend=False)
    fig.update_xaxes(title=x_title, rangemode="tozero")
    fig.update_yaxes(title="test top-1 (%)")
    _pad_y(fig, [p[2] for p in points])
    return _layout(fig, f"Accuracy vs {x_title.split(' (')[0]}")


@_memo
def attention_comparison(points: Sequence[tuple[str, float, float | None, float | None]]) -> go.Figure:
    """The attention study: top-1 against parameters, one labelled point per attention; (name, params, validation
    top-1, test top-1 at that epoch) per run. The attentions differ by a few per cent in size, so the axis is linear."""
    fig = go.Figure()
    for i, (metric, index, symbol) in enumerate((("test (at best validation)", 3, "circle"),
                                                 ("validation (best)", 2, "circle-open"))):
        shown = [p for p in points if p[index] is not None]
        fig.add_scatter(x=[p[1] for p in shown], y=[p[index] for p in shown], mode="markers+text" if i == 0 else
                        "markers", text=[_text(p[0]) for p in shown], textposition="top center",
                        textfont={"size": 15}, name=metric,
                        marker={"size": 15, "symbol": symbol, "color": PALETTE[i], "line": {"width": 2}})
    fig.update_xaxes(title="parameters", tickformat="~s")
    fig.update_yaxes(title="top-1 (%)")
    _pad_y(fig, [p[k] for p in points for k in (2, 3) if p[k] is not None])
    return _layout(fig, "What each attention buys: top-1 against parameters",
                   legend={"orientation": "h", "y": -0.25})
