"""A study: the runs that answer one of the paper's questions, planned and queued together, read back as one.

    python -m effnet.study methods --variant b1 --epochs 30 --out studies/b1-methods --wait
    python -m effnet.study methods --phi 1 --phis 1,2,3 --subset 5000 --out studies/methods
    python -m effnet.study grid --step 0.05 --tolerance 0.1 --max-points 12 --epochs 10 --out studies/grid
    python -m effnet.study attention --variant b0 --attentions se,eca,cbam,none --epochs 30 --out studies/att --wait

Three kinds:
- ``methods``: compound scaling against depth, width or resolution alone, each at the compound model's
  *actual* multiply-adds (``card.at_equal_macs``; rounding makes those differ from the nominal 2^phi),
  for one budget or several.
- ``grid``: the paper's first step, a small grid search for alpha, beta, gamma at phi=1 under
  alpha * beta^2 * gamma^2 ~ 2, every point trained with the same short budget, the winner chosen by
  validation top-1 (never by test: the test set is for the final report only).
- ``attention``: one backbone trained alike with each attention (SE, ECA, CBAM, none; optionally SE at
  several ratios), the study's future work: what does attention buy, and does it change where the model looks?

The runs go through the job queue like any other (one at a time per device slot), so a study is a
list of ordinary runs plus ``DIR/study.json``: ``{"kind", "runs": [{"run", "macs", "params", "method" |
"alpha", "beta", "gamma", "constraint" | "attention", "se_ratio"}, ...], "best"?}``, ``run`` relative to DIR where it can be. The
app lists the studies under ``<checkpoints>/studies/``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.arch.card import at_equal_macs, model_card
from effnet.arch.scaling import (
    ATTENTIONS,
    CONSTRAINT_TARGET,
    PAPER_ALPHA,
    PAPER_BETA,
    PAPER_GAMMA,
    SCALINGS,
    SE_RATIO,
    ScalingSpec,
)
from effnet.base import files, schemas
from effnet.base.access import Caller
from effnet.base.text import slug
from effnet.training import runs
from effnet.training.config import TrainConfig

STUDY = "study.json"
KINDS = ("methods", "grid", "attention")
# What each kind's rows must carry (check_row), and the default attentions of an attention study.
ROW_FIELDS = {"methods": ("method", "phi"), "grid": ("alpha", "beta", "gamma"), "attention": ("attention",)}
STUDY_ATTENTIONS = tuple(ATTENTIONS)
STUDIES = runs.STUDIES  # <checkpoints>/studies/<id>/study.json: the studies the app lists (never a run's name)
PAPER_POINT = (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA)
# The grid's default box: alpha * beta^2 * gamma^2 = 2 with all three >= 1 puts alpha <= 2 and beta,
# gamma <= sqrt(2); the box covers the whole feasible set.
GRID_RANGES = {"alpha": (1.0, 2.0), "beta": (1.0, 1.45), "gamma": (1.0, 1.45)}
GRID_STEP, GRID_TOLERANCE, GRID_MAX_POINTS = 0.05, 0.1, 12
NEAR_CHANCE = 2.0  # a study whose every run stays under this many times chance has learned nothing to compare
# Work per click, bounded before anything is allocated: the grid's cells (every (alpha, beta, gamma) looked at)
# and its points (each one a run). A step of 0.0016 over 1..2.5 is 825 million cells: 9 GB and minutes of the
# class server's CPU before this cap; the default grid is 2,100 cells, the widest ranges at step 0.05 are 29,791.
GRID_MAX_CELLS, GRID_POINTS_LIMIT = 100_000, 100


# ----------------------------------------------------------------------------- planning (pure)
def methods_plan(spec: ScalingSpec, phis: list[float] | None = None) -> list[dict[str, Any]]:
    """One row per (budget, method): the compound spec and each single dimension at its actual MACs.

    ``spec`` is the budget (an official variant or a custom phi); ``phis`` asks for several budgets with
    its coefficients instead. ``ValueError`` when a method cannot reach a budget, or for a V2 (no phi to scale).
    """
    if spec.is_v2:
        spec.with_scaling("depth")  # raises, saying why
    budgets = [spec] if not phis else [spec.baseline.replace(phi=float(p)) for p in phis]
    rows = []
    for budget in budgets:
        for method in SCALINGS:
            single = at_equal_macs(budget, method)
            rows.append({"method": method, "phi": budget.phi, "spec": single})
    return rows


def attention_plan(spec: ScalingSpec, attentions: list[str] | tuple[str, ...] = STUDY_ATTENTIONS,
                   se_ratios: list[float] | None = None) -> list[dict[str, Any]]:
    """One row per attention on ``spec``'s backbone (its shape, classes and geometry kept), SE once per ratio of
    ``se_ratios`` (default: the spec's own). ``ValueError`` naming the field for an unknown kind or a repeat."""
    if not attentions:
        raise ValueError(f"attentions: give at least one of {', '.join(ATTENTIONS)}")
    unknown = [a for a in attentions if a not in ATTENTIONS]
    if unknown:
        raise ValueError(f"attentions: {unknown[0]!r} is not one of {', '.join(ATTENTIONS)}")
    if len(set(attentions)) < len(attentions) or (se_ratios and len(set(se_ratios)) < len(se_ratios)):
        raise ValueError("attentions: each kind (and each SE ratio) once")
    rows = []
    for kind in attentions:
        ratios = (se_ratios or [spec.se_ratio]) if kind == "se" else [spec.se_ratio]
        rows += [{"attention": kind, "se_ratio": r, "spec": spec.replace(attention=kind, se_ratio=r)} for r in ratios]
    return rows


def row_name(kind: str, row: dict[str, Any]) -> str:
    """How a study row is named on its page: the method, the grid point, or the attention (``SE 0.5``, ``ECA``)."""
    if kind == "methods":
        return row["method"]
    if kind == "grid":
        return f"α={row['alpha']:g} β={row['beta']:g} γ={row['gamma']:g}"
    ratio = row.get("se_ratio")
    if row["attention"] in ("se", "cbam") and ratio not in (None, SE_RATIO):
        return f"{ATTENTIONS[row['attention']]} {ratio:g}"
    return ATTENTIONS[row["attention"]]


def grid_points(phi: float = 1.0, step: float = GRID_STEP, tolerance: float = GRID_TOLERANCE,
                max_points: int | None = GRID_MAX_POINTS,
                ranges: dict[str, tuple[float, float]] | None = None) -> list[dict[str, float]]:
    """(alpha, beta, gamma) on a grid with |alpha * beta^2 * gamma^2 - 2| <= tolerance, at most ``max_points``.

    The cap keeps points spread over the feasible set (farthest-point sampling from the paper's point,
    which is always included), not the first N of a sweep that would all share one alpha.
    """
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step: must be a positive number, got {step!r}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: must be 0 or more, got {tolerance!r}")
    if max_points is not None and not 1 <= max_points <= GRID_POINTS_LIMIT:
        raise ValueError(f"max_points: each point is a run; give 1 to {GRID_POINTS_LIMIT}, got {max_points!r}")
    ranges = GRID_RANGES | (ranges or {})
    counts = {}
    for name in ("alpha", "beta", "gamma"):
        low, high = ranges[name]
        if not (math.isfinite(low) and math.isfinite(high) and 1 <= low <= high):
            raise ValueError(f"{name}: the range must satisfy 1 <= low <= high, got {low}..{high}")
        counts[name] = math.floor((high - low) / step + 1e-9) + 1
    if math.prod(counts.values()) > GRID_MAX_CELLS:
        raise ValueError(f"step: {step:g} over these ranges makes {math.prod(counts.values()):,} grid cells (at most "
                         f"{GRID_MAX_CELLS:,}); use a coarser step or narrower ranges")
    axes = [[round(ranges[name][0] + k * step, 6) for k in range(count)] for name, count in counts.items()]
    feasible = [p for p in itertools.product(*axes) if abs(_constraint(p) - CONSTRAINT_TARGET) <= tolerance]
    if PAPER_POINT not in feasible:
        feasible.insert(0, PAPER_POINT)
    chosen = _spread(feasible, PAPER_POINT, max_points or len(feasible))
    return [{"alpha": a, "beta": b, "gamma": g, "constraint": round(_constraint((a, b, g)), 4)}
            for a, b, g in sorted(chosen)]


def _constraint(point: tuple[float, float, float]) -> float:
    a, b, g = point
    return a * b * b * g * g


def _spread(points: list[tuple[float, ...]], first: tuple[float, ...], count: int) -> list[tuple[float, ...]]:
    """Farthest-point sampling: each next point is the one farthest from all chosen so far."""
    chosen = [first]
    nearest = [math.dist(p, first) for p in points]
    while len(chosen) < min(count, len(points)):
        i = max(range(len(points)), key=nearest.__getitem__)
        chosen.append(points[i])
        nearest = [min(d, math.dist(p, points[i])) for d, p in zip(nearest, points, strict=True)]
    return chosen


def grid_specs(points: list[dict[str, float]], template: ScalingSpec, phi: float = 1.0) -> list[ScalingSpec]:
    """Each grid point as a custom spec at ``phi`` in the template's geometry, classes and base."""
    base = template.baseline
    return [base.replace(phi=phi, alpha=p["alpha"], beta=p["beta"], gamma=p["gamma"]) for p in points]


# ----------------------------------------------------------------------------- queueing
def _row(spec: ScalingSpec, run_dir: Path, out: Path, **fields: Any) -> dict[str, Any]:
    card = model_card(spec)
    try:
        where = os.path.relpath(run_dir, out.resolve())
    except ValueError:  # another drive (Windows): keep it absolute
        where = str(run_dir)
    return {"run": where, "macs": card.macs, "params": card.params, **fields}


def queue(kind: str, configs: list[TrainConfig], fields: list[dict[str, Any]], out: Path,
          root: str | os.PathLike | None = None, labels: list[str] | None = None,
          caller: Caller | None = None, **settings: Any) -> dict[str, Any]:
    """Queue a study's runs (all or none) and write ``out/study.json``; returns the study as written.

    A folder that already holds a study is refused: a study is never overwritten.
    """
    from effnet.queue import jobs  # the queue; reading a study needs none of it

    out = Path(out)
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    if (out / STUDY).exists() or (out / STUDY).is_symlink():
        raise ValueError(f"out: {out} already holds a study; choose a new folder")
    blocked = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocked is not None and not blocked.is_dir():
        raise ValueError(f"out: {blocked} is not a folder; choose a folder for the study")  # before any run is queued
    root = runs.checkpoints_dir(root).resolve()
    ids = jobs.submit_many(configs, root, labels, caller)
    return record(kind, configs, ids, fields, out, root, **settings)


def record(kind: str, configs: list[TrainConfig], ids: list[str], fields: list[dict[str, Any]], out: Path,
           root: str | os.PathLike | None = None, **settings: Any) -> dict[str, Any]:
    """Write ``out/study.json`` for runs already queued (``ids``, one per config); returns the study as written."""
    root = runs.checkpoints_dir(root).resolve()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_row(c.spec, root / rid, out, **f) for c, rid, f in zip(configs, ids, fields, strict=True)]
    study = {"kind": kind, "runs": rows, "created_at": time.time(), "settings": settings}
    files.write_json(out / STUDY, study)
    return study


def queue_methods(spec: ScalingSpec, config: TrainConfig, out: Path, phis: list[float] | None = None,
                  root: str | os.PathLike | None = None, caller: Caller | None = None) -> dict[str, Any]:
    """The scaling-methods study: compound, depth, width, resolution at each budget's actual MACs."""
    plan = methods_plan(spec, phis)
    configs = [config.replace(spec=r["spec"]) for r in plan]
    labels = [("compound " if r["method"] == "compound" else "") + runs.describe(r["spec"], c)
              for r, c in zip(plan, configs, strict=True)]
    fields = [{"method": r["method"], "phi": r["phi"]} for r in plan]
    return queue("methods", configs, fields, out, root, labels, caller, budget=spec.name, phis=phis)


def queue_attention(spec: ScalingSpec, config: TrainConfig, out: Path,
                    attentions: list[str] | tuple[str, ...] = STUDY_ATTENTIONS, se_ratios: list[float] | None = None,
                    root: str | os.PathLike | None = None, caller: Caller | None = None) -> dict[str, Any]:
    """The attention study: ``spec``'s backbone with each attention, every run with ``config``'s settings."""
    plan = attention_plan(spec, attentions, se_ratios)
    configs = [config.replace(spec=r["spec"]) for r in plan]
    labels = [runs.describe(r["spec"], c) for r, c in zip(plan, configs, strict=True)]
    fields = [{"attention": r["attention"], "se_ratio": r["se_ratio"]} for r in plan]
    return queue("attention", configs, fields, out, root, labels, caller, budget=spec.name)


def queue_grid(config: TrainConfig, out: Path, phi: float = 1.0, step: float = GRID_STEP,
               tolerance: float = GRID_TOLERANCE, max_points: int | None = GRID_MAX_POINTS,
               ranges: dict[str, tuple[float, float]] | None = None, root: str | os.PathLike | None = None,
               caller: Caller | None = None) -> dict[str, Any]:
    """The coefficient grid search: the feasible (alpha, beta, gamma), each trained with ``config``'s settings
    in its spec's geometry and class count."""
    points = grid_points(phi, step, tolerance, max_points, ranges)
    configs = [config.replace(spec=s) for s in grid_specs(points, config.spec, phi)]
    labels = [f"grid α={p['alpha']:g} β={p['beta']:g} γ={p['gamma']:g} · {config.epochs} ep" for p in points]
    return queue("grid", configs, points, out, root, labels, caller, phi=phi, step=step, tolerance=tolerance,
                 max_points=max_points, ranges=ranges)


# ----------------------------------------------------------------------------- reading
class StudyError(ValueError):
    """A study folder that cannot be read; the message says why."""


@dataclass(frozen=True)
class StudyRun:
    """One row of a study with its run as it is now (``info`` None when the run folder is missing)."""

    row: dict[str, Any]
    info: runs.RunInfo | None
    metrics: list[dict[str, Any]]

    @property
    def best_val(self) -> float | None:
        """Validation top-1 at the selected epoch (the best one); None without a validation split."""
        row = runs.selected_row(self.metrics)
        return None if row is None else row.get("val_top1")

    @property
    def test_at_best_val(self) -> float | None:
        """Test top-1 at the selected epoch (``runs.selected_row``): chosen on validation, never on test."""
        row = runs.selected_row(self.metrics)
        return None if row is None else row.get("test_top1")

    @property
    def state(self) -> str:
        return self.info.state if self.info is not None else "missing"


@dataclass(frozen=True)
class Study:
    path: Path
    kind: str
    runs: list[StudyRun]
    data: dict[str, Any]

    @property
    def ended(self) -> bool:
        return all(r.state in (*runs.ENDED, "damaged", "missing") for r in self.runs)

    @property
    def best(self) -> StudyRun | None:
        """The run with the highest best-epoch validation top-1 (the grid search's winner)."""
        scored = [r for r in self.runs if r.best_val is not None]
        return max(scored, key=lambda r: r.best_val) if scored else None

    def near_chance(self) -> str | None:
        """What to say when every ended run stayed within ``NEAR_CHANCE`` x chance: the ranking means nothing then
        (the smallest class settings end at 11-17% on ten classes), so the page says so and what to change."""
        ended = [r for r in self.runs if r.state == "finished" and r.info is not None and r.info.spec is not None]
        if not ended or len(ended) < len(self.runs):
            return None
        chance = 100 / ended[0].info.spec.num_classes
        scores = [r.best_val if r.best_val is not None else r.test_at_best_val for r in ended]
        if any(s is None or s > NEAR_CHANCE * chance for s in scores):
            return None
        return (f"Every run ended near chance (at most {max(scores):.1f}% top-1, where guessing gives {chance:.1f}%): "
                "this study cannot tell the models apart yet. Train longer (more epochs), on more images "
                "(training images 0 = all), or on a GPU machine, then compare.")


def check_row(row: object, kind: str) -> dict[str, Any]:
    """One run row of a study.json, validated by its schema (a study file is read like any other untrusted file),
    with what its kind needs (``ROW_FIELDS``): a method and φ for a methods study, α, β and γ for a grid, the
    attention for an attention study."""
    try:
        checked = schemas.parse(schemas.StudyRow, row, STUDY)
    except files.Damaged as exc:
        raise StudyError(str(exc)) from exc
    needs = ROW_FIELDS[kind]
    missing = [n for n in needs if getattr(checked, n) is None]
    if missing:
        raise StudyError(f"{STUDY}: a {kind} study's run row needs {', '.join(missing)}")
    if checked.attention is not None and checked.attention not in ATTENTIONS:
        raise StudyError(f"{STUDY}: attention {checked.attention!r} is not one of {', '.join(ATTENTIONS)}")
    return row


def run_folder(study_dir: Path, where: str, root: Path) -> Path | None:
    """The run folder a row names, only when it is a run directly inside the checkpoints folder ``root``."""
    target = Path(os.path.normpath(study_dir.resolve() / where))
    if target.parent != root.resolve() or not runs.is_run_id(target.name) or target.is_symlink():
        return None
    return target if target.is_dir() else None


def load(study_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> Study:
    """A study folder with each of its runs read now; ``StudyError`` saying why when it cannot be read."""
    study_dir = Path(study_dir)
    root = runs.checkpoints_dir(root)
    try:
        data = files.load_json(study_dir / STUDY)
    except files.Damaged as exc:
        raise StudyError(str(exc)) from exc
    if data is None:
        raise StudyError(f"{study_dir} has no {STUDY}")
    try:
        kind = schemas.parse(schemas.StudyFile, data, STUDY).kind
    except files.Damaged as exc:
        raise StudyError(str(exc)) from exc
    rows = []
    for row in data["runs"]:
        row = check_row(row, kind)
        folder = run_folder(study_dir, row["run"], root)
        info = runs.read_run(folder) if folder is not None else None
        metrics = runs.read_metrics(folder) if info is not None and not info.damaged else []
        rows.append(StudyRun(row, info, metrics))
    return Study(study_dir, kind, rows, data)


def list_studies(root: str | os.PathLike | None = None) -> list[Path]:
    """The study folders under ``<checkpoints>/studies/``, newest first."""
    folder = runs.checkpoints_dir(root) / STUDIES
    if not folder.is_dir() or folder.is_symlink():
        return []
    found = [d for d in folder.iterdir() if runs.RUN_ID.fullmatch(d.name) and d.is_dir() and not d.is_symlink()
             and (d / STUDY).is_file()]
    return sorted(found, key=lambda d: d.name, reverse=True)


def new_study_dir(root: str | os.PathLike | None, name: str) -> Path:
    """A fresh folder name under ``<checkpoints>/studies/`` for a study called ``name``."""
    return (runs.checkpoints_dir(root) / STUDIES
            / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(name, 'study')}-{secrets.token_hex(2)}")


def record_best(study: Study) -> dict[str, Any] | None:
    """Write the grid study's winner into its study.json (``"best"``: the row with the highest val top-1)."""
    best = study.best
    if best is None:
        return None
    data = study.data | {"best": best.row | {"val_top1": best.best_val}}
    files.write_json(study.path / STUDY, data)
    return data["best"]


def wait(study_dir: Path, root: str | os.PathLike | None = None, poll_s: float = 2.0) -> Study:
    """Block until every run of the study has ended; prints one line per state change."""
    seen: dict[str, str] = {}
    while True:
        study = load(study_dir, root)
        for r in study.runs:
            if seen.get(r.row["run"]) != r.state:
                seen[r.row["run"]] = r.state
                print(f"{r.row['run']}: {r.state}", file=sys.stderr, flush=True)
        if study.ended:
            return study
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    from effnet.training.flags import add_spec_arguments, add_training_arguments

    p = argparse.ArgumentParser(prog="python -m effnet.study", description=__doc__.split("\n\n")[0])
    kinds = p.add_subparsers(dest="kind", required=True)
    methods = kinds.add_parser("methods", help="compound vs one dimension alone at equal multiply-adds")
    add_spec_arguments(methods, num_classes_default=None)
    methods.add_argument("--phis", help="several budgets at once, e.g. 1,2,3 (with --alpha/--beta/--gamma)")
    attention = kinds.add_parser("attention", help="one backbone with each attention (SE, ECA, CBAM, none)")
    add_spec_arguments(attention, num_classes_default=None)
    attention.add_argument("--attentions", default=",".join(STUDY_ATTENTIONS),
                           help="the kinds to train, comma separated (default %(default)s)")
    attention.add_argument("--se-ratios", help="SE at several bottleneck ratios, e.g. 0.125,0.25,0.5")
    grid = kinds.add_parser("grid", help="the alpha/beta/gamma grid search at phi=1")
    grid.add_argument("--phi", type=float, default=1.0)
    grid.add_argument("--step", type=float, default=GRID_STEP)
    grid.add_argument("--tolerance", type=float, default=GRID_TOLERANCE,
                      help="keep points with |alpha*beta^2*gamma^2 - 2| <= this")
    grid.add_argument("--max-points", type=int, default=GRID_MAX_POINTS)
    for name, (low, high) in GRID_RANGES.items():
        grid.add_argument(f"--{name}-range", default=f"{low},{high}", help="LOW,HIGH (default %(default)s)")
    grid.add_argument("--geometry", choices=("cifar", "imagenet"), default="cifar")
    grid.add_argument("--num-classes", type=int, help="default: 100, or the folder's class count (--dataset folder)")
    for sub in (methods, attention, grid):
        add_training_arguments(sub)
        sub.add_argument("--out", required=True, help="the study's folder (study.json is written there)")
        sub.add_argument("--checkpoints", help="where the runs go (default: $EFFNET_CHECKPOINTS or ./checkpoints)")
        sub.add_argument("--wait", action="store_true", help="block until every run has ended")
    return p


def numbers(text: str, name: str) -> list[float]:
    """``"1, 2,3"`` -> [1.0, 2.0, 3.0]; ``ValueError`` naming ``name`` otherwise (the CLI's lists and the page's)."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"{name}: expected numbers separated by commas, got {text!r}") from exc


def _start(args: argparse.Namespace) -> dict[str, Any]:
    from effnet.training.config import normalization_for
    from effnet.training.flags import config_from_args, num_classes_from_args, spec_from_args

    norm = normalization_for(args.pretrained)
    if args.kind == "methods":
        if args.scaling != "compound":
            raise ValueError("scaling: a methods study trains every method; leave --scaling out")
        spec = spec_from_args(args, num_classes=num_classes_from_args(args), normalization=norm)
        if not isinstance(spec, ScalingSpec):
            raise ValueError(f"model: a scaling-methods study scales an EfficientNet; {spec.name} has no φ to scale "
                             "(train it beside them with python -m effnet.train --model ...)")
        config = config_from_args(args, spec)
        phis = numbers(args.phis, "phis") if args.phis else None
        return queue_methods(spec, config, Path(args.out), phis, args.checkpoints)
    if args.kind == "attention":
        if args.attention is not None or args.se_ratio is not None:
            raise ValueError("attention: an attention study trains each of --attentions (and --se-ratios); leave "
                             "--attention and --se-ratio out")
        spec = spec_from_args(args, num_classes=num_classes_from_args(args), normalization=norm)
        if not isinstance(spec, ScalingSpec):
            raise ValueError(f"model: an attention study changes an EfficientNet's blocks; {spec.name} has none")
        ratios = numbers(args.se_ratios, "se_ratios") if args.se_ratios else None
        kinds = [k.strip().lower() for k in args.attentions.split(",") if k.strip()]
        return queue_attention(spec, config_from_args(args, spec), Path(args.out), kinds, ratios, args.checkpoints)
    ranges = {}
    for name in GRID_RANGES:
        low_high = numbers(getattr(args, f"{name}_range"), f"{name}_range")
        if len(low_high) != 2:
            raise ValueError(f"{name}_range: expected LOW,HIGH")
        ranges[name] = (low_high[0], low_high[1])
    template = ScalingSpec(phi=0.0, geometry=args.geometry, num_classes=num_classes_from_args(args), normalization=norm)
    return queue_grid(config_from_args(args, template), Path(args.out), args.phi, args.step, args.tolerance,
                      args.max_points, ranges, args.checkpoints)


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    try:
        study = _start(args)
    except ValueError as exc:
        p.error(str(exc))
    except RuntimeError as exc:  # the Slurm backend could not submit (not installed, controller down)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"queued {len(study['runs'])} runs; study: {Path(args.out) / STUDY}")
    for row in study["runs"]:
        print(row["run"])
    if not args.wait:
        return 0
    done = wait(Path(args.out), args.checkpoints)
    if done.kind == "grid":
        best = record_best(done)
        if best is not None:
            print(f"best by validation top-1: α={best['alpha']:g} β={best['beta']:g} γ={best['gamma']:g} "
                  f"({best['val_top1']:.2f}%)")
    bad = [f"{r.row['run']}: {r.state}" for r in done.runs if r.state != "finished"]
    if bad:
        print("not every run finished:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0

