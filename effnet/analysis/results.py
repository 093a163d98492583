"""What the runs achieved: the seed study's Table 1, per-class accuracy and confusions, from run files.

Pure bookkeeping over ``checkpoints/<run>/{config.json, metrics.jsonl, confusion.json}``: no model
is loaded. Params and MACs come from the model card of each run's spec.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.arch import specs
from effnet.arch.baselines import BaselineSpec
from effnet.arch.scaling import OFFICIAL
from effnet.base import files
from effnet.training import runs
from effnet.training.config import TrainConfig

PAPER_IMAGENET_TOP1 = {name.upper(): v.imagenet_top1 for name, v in OFFICIAL.items()}
# The study this lab grew from: B0-B7 on CIFAR-100 from scratch, SGD+momentum, cross-entropy, 200 epochs.
# (validation top-1, test top-1), percent.
SEED_STUDY = {"B0": (63.14, 67.94), "B1": (64.26, 68.78), "B2": (63.94, 68.48), "B3": (65.98, 69.11),
              "B4": (67.04, 69.51), "B5": (66.44, 70.42), "B6": (66.56, 70.75), "B7": (67.48, 70.22)}


SELECTED_EPOCH = "selected epoch (best validation; the last without a validation split)"
# Why the seed's best-of-all-epochs test column is optimistic (the Results page and the Lesson say it).
OPTIMISTIC_NOTE = ("The seed study reported the best test top-1 over all epochs: that picks the epoch on the test "
                   "set itself, so it is optimistic (its test numbers sit about 4 points above its validation "
                   "numbers). The honest number is test top-1 at the epoch chosen on validation.")


@dataclass(frozen=True)
class RunResult:
    run_id: str
    path: Path
    label: str
    state: str
    spec: specs.Spec
    rows: list[dict[str, Any]]
    config: TrainConfig | None = None
    owner: str | None = None

    @property
    def recipe(self) -> str:
        """What its number depends on besides the model: epochs, data and schedule. An accuracy chart draws a line
        only through runs of one recipe (3- and 2-epoch runs of one spec made a vertical step of a "scaling
        curve")."""
        c = self.config
        if c is None:
            return "recipe unknown"
        data = Path(c.data_dir).name if c.dataset == "folder" and c.data_dir else "CIFAR-100"
        data += f" ({c.subset:,})" if c.subset else ""  # the images it trained on, when a subset
        return f"{c.epochs} ep · {data} · {c.schedule}"

    @property
    def params(self) -> int:
        return specs.card(self.spec).params

    @property
    def macs(self) -> int:
        return specs.card(self.spec).macs

    @property
    def series(self) -> str:
        """Which line or points it belongs to on the accuracy-vs-size charts: EfficientNet, or its baseline."""
        return self.spec.name if isinstance(self.spec, BaselineSpec) else "EfficientNet"

    @property
    def selected(self) -> dict[str, Any]:
        """The epoch this run reports (``runs.selected_row``: best validation, else the last epoch)."""
        return runs.selected_row(self.rows)

    @property
    def has_validation(self) -> bool:
        return any(r.get("val_top1") is not None for r in self.rows)

    def at_selected(self, key: str) -> float | None:
        """``key`` (``test_top1``, ``val_top1``, ...) at the selected epoch: the run's honest number."""
        return self.selected.get(key)

    def best_of_epochs(self, key: str) -> float | None:
        """The highest ``key`` over all epochs, as the seed study reported it; optimistic for test (it is
        chosen on the test set itself)."""
        values = [r[key] for r in self.rows if r.get(key) is not None]
        return max(values) if values else None

    def final(self, key: str) -> float | None:
        return self.rows[-1].get(key) if self.rows else None


@dataclass(frozen=True)
class Gathered:
    """The runs that have results, and why each other run is left out (``(run id, reason)``)."""

    results: list[RunResult]
    left_out: list[tuple[str, str]]


def gather(root: str | Path | None = None) -> Gathered:
    """Every run with at least one finished epoch (running ones included), oldest first; the rest with reasons."""
    usable, left_out = [], []
    for info in runs.list_runs(root):
        if info.damaged or info.spec is None:
            left_out.append((info.run_id, info.error or "no config.json or job.json"))
            continue
        try:
            rows = runs.load_metrics(info.path)
            specs.card(info.spec)
        except ValueError as exc:
            left_out.append((info.run_id, f"damaged: {exc}"))
            continue
        if not rows:
            left_out.append((info.run_id, f"no finished epoch yet ({info.state})"))
            continue
        usable.append((info, rows))
    labels = [info.label for info, _ in usable]
    # Two runs of the same variant get their run id's tail, so table columns stay distinct; a run still training
    # says so (its numbers will change).
    results = [RunResult(info.run_id, info.path,
                         (f"{info.label} ({info.run_id[-4:]})" if labels.count(info.label) > 1 else info.label)
                         + (" (training)" if info.active else ""), info.state, info.spec, rows, info.config,
                         info.owner)
               for info, rows in usable]
    return Gathered(results, left_out)


def collect(root: str | Path | None = None) -> list[RunResult]:
    """``gather(root).results``: the runs that have results."""
    return gather(root).results


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# The rows a short summary shows (the Lesson): validation and test top-1 at each run's selected epoch.
VAL_AT_SELECTED, TEST_AT_SELECTED = "val top-1 at the selected epoch (%)", "test top-1 at the selected epoch (%)"


def study_table(results: list[RunResult]) -> tuple[list[str], list[dict[str, Any]]]:
    """(column labels, rows): one column per run as in the seed study's Table 1, rows = measures."""
    columns = [r.label for r in results]

    def row(name: str, values: list[Any]) -> dict[str, Any]:
        return {"": name, **dict(zip(columns, values, strict=True))}

    return columns, [
        row(SELECTED_EPOCH, [r.selected["epoch"] for r in results]),
        row(VAL_AT_SELECTED, [_round(r.at_selected("val_top1")) for r in results]),
        row(TEST_AT_SELECTED, [_round(r.at_selected("test_top1")) for r in results]),
        row("seed's columns: val top-1, best of all epochs (%)", [_round(r.best_of_epochs("val_top1")) for r in results]),
        row("seed's columns: test top-1, best of all epochs (%)",
            [_round(r.best_of_epochs("test_top1")) for r in results]),
        row("val top-1, final epoch (%)", [_round(r.final("val_top1")) for r in results]),
        row("test top-1, final epoch (%)", [_round(r.final("test_top1")) for r in results]),
        row("epochs", [len(r.rows) for r in results]),
        row("params (M)", [round(r.params / 1e6, 2) for r in results]),
        row("MACs (G)", [round(r.macs / 1e9, 3) for r in results]),
        row("paper: ImageNet top-1 (%), for reference", [PAPER_IMAGENET_TOP1.get(r.spec.name) for r in results]),
    ]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting like a formula (a run named ``=HYPERLINK(...)``) gets a
    leading apostrophe, as OWASP advises; numbers stay numbers."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """Table 1 as CSV, every text cell (run labels included) safe to open in a spreadsheet."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["", *(csv_cell(c) for c in columns)])
    for row in rows:
        writer.writerow([csv_cell(row[""]), *(csv_cell(row[c]) for c in columns)])
    return buf.getvalue()


MIN_POINTS_FOR_R = 3  # through two points any line fits: r = ±1 says nothing


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Correlation coefficient; None with fewer than ``MIN_POINTS_FOR_R`` points or no spread."""
    n = len(xs)
    if n < MIN_POINTS_FOR_R:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


@dataclass(frozen=True)
class Confusion:
    """A test-set confusion matrix (rows: true class, columns: predicted) with class names."""

    matrix: list[list[int]]
    fine_names: list[str]
    coarse_names: list[str]
    fine_to_coarse: list[int]
    epoch: int

    def per_class(self) -> list[tuple[str, float, int]]:
        """(name, accuracy %, images) for every class that has test images, best first."""
        out = []
        for i, row in enumerate(self.matrix):
            n = sum(row)
            if n:
                out.append((self.fine_names[i], 100 * row[i] / n, n))
        return sorted(out, key=lambda t: (-t[1], t[0]))

    def coarse(self) -> list[list[int]]:
        """The 20 superclasses: counts summed over their fine classes."""
        k = len(self.coarse_names)
        grid = [[0] * k for _ in range(k)]
        for i, row in enumerate(self.matrix):
            for j, count in enumerate(row):
                grid[self.fine_to_coarse[i]][self.fine_to_coarse[j]] += count
        return grid

    def within(self, coarse_index: int) -> tuple[list[str], list[list[int]]]:
        """Drill-down: the fine classes of one superclass that have test images, against each other, plus
        'elsewhere' (a class with no test image would only add an empty row)."""
        members = [i for i, c in enumerate(self.fine_to_coarse) if c == coarse_index and sum(self.matrix[i])]
        grid = []
        for i in members:
            inside = [self.matrix[i][j] for j in members]
            grid.append([*inside, sum(self.matrix[i]) - sum(inside)])
        return [self.fine_names[i] for i in members], grid


def load_confusion(run_dir: Path, which: str = "best") -> Confusion | None:
    """The run's confusion matrix ("best" or "final" epoch), or None if it has none yet.

    ``files.Damaged`` when confusion.json is malformed (a page shows that instead of breaking).
    """
    confusion, classes = runs.load_confusion_file(run_dir), runs.load_classes(run_dir)  # schema-checked counts
    entry = getattr(confusion, which, None) if confusion is not None else None
    if entry is None or not classes:
        return None
    n = len(classes["fine"])
    if len(entry.matrix) != n or any(len(row) != n for row in entry.matrix):
        raise files.Damaged(f"{runs.CONFUSION}: the {which} matrix is not {n}x{n} counts")
    return Confusion(entry.matrix, classes["fine"], classes["coarse"], classes["fine_to_coarse"], entry.epoch)
