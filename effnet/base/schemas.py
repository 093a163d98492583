"""The shape of every JSON file the lab reads from disk, in one place, validated the same way.

Run files (status, job, label, metrics, confusion), study.json, compress.json and a bundle's manifest
all come from disk, and on a shared server (or in a bundle from someone else) nothing there is
trusted. Each file kind is a strict Pydantic model here and ``parse`` is the one door: a file that
does not fit raises ``files.Damaged`` with ``<file>: <field> = <value>: <why>``, so every page shows
the same kind of reason and no reader can drift from the others.

Why Pydantic (v2, strict) rather than a small hand-written checker: both were tried on status.json
and metrics rows (scratch script, 20,000 objects on the 2-core machine): 2.2 µs against 2.8 µs per
object, and the same messages once formatted. Strict mode settles the questions that had drifted
between the hand-written copies, for every field at once: ``True`` is not a count, ``"3"`` is not a
number, NaN and infinities are refused (``allow_inf_nan=False``), and nested files (study rows,
compression variants, confusion matrices) need no loops of their own. It costs a dependency and
0.12 s of import, which the pages and the queue's runner already pay for less useful things.

Text a user controls (run labels) is cleaned by one rule, ``clean_label``: control and bidirectional
characters are dropped and 1 to 80 characters are kept, on every path in (rename, label.json, an
imported job.json).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from effnet.base.files import Damaged
from effnet.base.text import without_controls

ACTIVE = ("starting", "waiting", "loading data", "running")
ENDED = ("stopped", "finished", "failed")
STATES = ("queued", *ACTIVE, *ENDED)
LABEL_CHARS = (1, 80)
OWNER_TOKEN = re.compile(r"[0-9a-f]{32}")  # an owner's token (base.access): 128 random bits as hex
STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="allow", frozen=True)


def clean_label(text: object) -> str:
    """A label as every page shows it: whitespace collapsed, control and bidirectional-override characters
    (which can reorder what others see) dropped; ``ValueError`` unless 1 to 80 characters remain."""
    if not isinstance(text, str):
        raise ValueError("label: must be text")
    label = without_controls(text)
    low, high = LABEL_CHARS
    if not low <= len(label) <= high:
        raise ValueError(f"label: give a name of {low} to {high} characters (after dropping control characters)")
    return label


def _is_clean(text: str) -> str:
    if clean_label(text) != text:
        raise ValueError("holds control characters or extra spaces")
    return text


Label = Annotated[str, AfterValidator(_is_clean)]
Count = Annotated[int, Field(ge=0)]
Percent = Annotated[float, Field(ge=0, le=100)]
# A moment as seconds since 1970, up to the year 2286: a crafted 1e20 would break every page that shows a date.
Moment = Annotated[float, Field(ge=0, le=1e10)]


class Strict(BaseModel):
    model_config = STRICT


class Status(Strict):
    """status.json: where a run stands, written by the trainer, the queue and the Slurm backend."""

    state: Literal[STATES]
    pid: int | None = None
    heartbeat: Moment | None = None
    started: Moment | None = None
    ended: Moment | None = None
    epoch: Count | None = None
    epochs: Annotated[int, Field(ge=1)] | None = None
    step: Count | None = None
    steps: Count | None = None
    running_since: Moment | None = None
    start_fraction: float | None = None  # written by v0.2's trainers (an ETA from elapsed time); read, unused
    images_per_second: float | None = None
    # The pace the ETA rests on (effnet.training.progress.Pace): seconds per step, per end-of-epoch evaluation, when
    # the evaluation under way began, and the images one evaluation reads and one step trains.
    step_s: Annotated[float, Field(gt=0, le=1e6)] | None = None
    eval_s: Annotated[float, Field(ge=0, le=1e7)] | None = None
    eval_started: Moment | None = None
    eval_images: Count | None = None
    step_images: Annotated[int, Field(ge=1)] | None = None
    generation: Count | None = None
    exit_code: int | None = None
    error: str | None = None
    phase: str | None = None
    device: str | None = None
    slot: str | None = None
    world_size: Count | None = None
    backend: str | None = None  # "slurm": submitted to Slurm (set before sbatch answers, so no local runner takes it)
    slurm_job_id: str | None = None  # a run on the Slurm backend: its job (1234, or 1234_5 in an array)
    slurm_batch: str | None = None
    slurm_state: str | None = None
    slurm_reason: str | None = None
    slurm_node: str | None = None  # written before slurm_nodes existed (v0.3): still accepted in old files
    slurm_nodes: str | None = None  # the job's node list (Slurm's spelling: n[1-2]) once it runs
    slurm_requeues: Count | None = None
    node: str | None = None


class Job(Strict):
    """job.json around its config (the config itself is ``TrainConfig``'s to check)."""

    config: dict[str, Any]
    label: Label | None = None
    owner: Annotated[str, Field(pattern=OWNER_TOKEN.pattern)] | None = None
    queued_at: Count = 0
    generation: Count = 0
    device: str | None = None
    resume: bool = False
    distributed: bool = False
    imported: str | None = None  # the import batch that brought the run here (a bundle), if any
    stopped_by_teacher: Moment | None = None  # when the teacher stopped this student's run (cleared on resume)


class LabelFile(Strict):
    label: Label


class MetricsRow(Strict):
    """One line of metrics.jsonl: an epoch's numbers (val_* are null without a validation split). The trainer writes
    the train and test numbers for every epoch, so a row without them is damaged, not a row to chart."""

    epoch: Annotated[int, Field(ge=1)]
    train_loss: float
    train_top1: Percent
    val_top1: Percent | None = None
    val_top5: Percent | None = None
    test_top1: Percent
    test_top5: Percent
    val_loss: float | None = None
    test_loss: float | None = None
    lr: float | None = None
    epoch_seconds: float | None = None
    images_per_second: float | None = None


class LiveRow(Strict):
    """One line of live.jsonl: a point within an epoch (running train numbers, or an early validation slice)."""

    epoch: Annotated[int, Field(ge=1)]
    step: Count
    steps: Annotated[int, Field(ge=1)]
    train_loss: float | None = None
    train_top1: Percent | None = None
    val_top1: Percent | None = None
    val_loss: float | None = None


class Classes(Strict):
    fine: list[str]
    coarse: list[str]
    fine_to_coarse: list[Count]


class Matrix(Strict):
    epoch: Annotated[int, Field(ge=1)]
    matrix: list[list[Count]]


class Confusion(Strict):
    classes: Classes | None = None
    final: Matrix | None = None
    best: Matrix | None = None


class StudyRow(Strict):
    run: str
    macs: Annotated[float, Field(ge=0)]
    params: Annotated[float, Field(ge=0)]
    method: Literal["compound", "depth", "width", "resolution"] | None = None
    phi: float | None = None
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    constraint: float | None = None
    attention: str | None = None  # a key of effnet.arch.scaling.ATTENTIONS (checked by study.check_row)
    se_ratio: Annotated[float, Field(gt=0, le=1)] | None = None


class StudySettings(Strict):
    """What a study was started with (shown on its page; the grid's search settings)."""

    phi: float | None = None
    step: Annotated[float, Field(gt=0)] | None = None
    tolerance: Annotated[float, Field(ge=0)] | None = None
    max_points: Annotated[int, Field(ge=1)] | None = None


class StudyFile(Strict):
    kind: Literal["methods", "grid", "attention"]
    runs: list[StudyRow]
    created_at: Moment | None = None
    settings: StudySettings = StudySettings()
    best: dict[str, Any] | None = None


class Variant(Strict):
    name: str
    size_bytes: Count
    params: Count
    latency_ms_b1: Annotated[float, Field(ge=0)]
    latency_ms_b32: Annotated[float, Field(ge=0)]
    test_top1: Percent
    file: str | None = None


class CompressFile(Strict):
    variants: list[Variant]


class Manifest(Strict):
    """bundle.json: what a bundle says it holds."""

    format: Literal[1]
    kind: Literal["run", "runs", "study"]
    runs: Annotated[list[str], Field(min_length=1)]
    study: StudyFile | None = None


M = TypeVar("M", bound=BaseModel)


def _reason(exc: ValidationError, file: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the file"
    value = repr(first.get("input"))
    value = value if len(value) <= 60 else value[:57] + "..."
    return f"{file}: {where} = {value}: {first['msg'][0].lower()}{first['msg'][1:]}"


def parse(model: type[M], data: object, file: str | Path) -> M:
    """``data`` (decoded JSON) as ``model``; ``Damaged`` with the first reason when it does not fit."""
    name = Path(file).name
    if not isinstance(data, dict):
        raise Damaged(f"{name}: expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Damaged(_reason(exc, name)) from exc


@lru_cache(maxsize=64)
def _adapter(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint, config=ConfigDict(strict=True, allow_inf_nan=False))


def check_value(name: str, hint: Any, value: object) -> None:
    """``ValueError`` naming ``name`` unless ``value`` has the declared type ``hint`` (the same strict rules as
    the file models: no ``True`` for a number, no NaN); used by ``TrainConfig`` for its fields."""
    try:
        _adapter(hint).validate_python(value)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"]
        raise ValueError(f"{name}: {message[0].lower()}{message[1:]}, got {value!r}") from exc
