"""A training run's settings: ``TrainConfig``, its validation and its JSON form.

No torch here: the app checks a config (and the queue stores one) without paying for importing
torch. The same JSON is the job file the queue hands to the trainer (``python -m effnet.train
--config job.json``) and the ``train`` part of a run's ``config.json``, so a run can be read,
resumed or repeated from its folder alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet.arch import specs
from effnet.arch.baselines import BaselineSpec
from effnet.arch.scaling import ScalingSpec
from effnet.base import files
from effnet.base.schemas import check_value
from effnet.training.devices import check_device

SCHEDULES = ("cosine", "onecycle", "constant")
AUGMENTATIONS = ("none", "standard", "cutout")
# auto: bf16 autocast on CUDA, fp32 elsewhere. bf16 on the CPU runs the accelerator path where no GPU is.
PRECISIONS = ("auto", "bf16", "fp32")
# cifar100: the study's data; folder: your own images, one subfolder per class (effnet.data.folder).
DATASETS = ("cifar100", "folder")
CIFAR100_CLASSES = 100
# The quick CPU demo (Train and Study pages, the notebook): a φ=-3 model on a subset, minutes on a laptop.
QUICK_DEMO_PHI = -3.0
QUICK_DEMO = {"epochs": 3, "batch_size": 64, "lr": 0.05, "subset": 2000, "eval_subset": 500, "val_size": 1000}
# Validation held out of the training images when val_size is not given: CIFAR-100's 5,000 (its usual 45k/5k
# split), and a tenth of your own images (a folder of 100 images must still train).
CIFAR_VAL_SIZE, VAL_FRACTION = 5000, 0.1
# The study this lab grew from: B0-B7 from scratch on CIFAR-100, SGD with momentum, cross-entropy, 200 epochs.
SEED_STUDY = {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "nesterov": False, "label_smoothing": 0.0,
              "schedule": "cosine", "weight_decay": 5e-4, "subset": None, "eval_subset": None, "val_size": CIFAR_VAL_SIZE,
              "ema": 0.0}
MAX_EPOCHS = 1000  # the study trains 200; a bound keeps every run's metrics file small


def normalization_for(pretrained: bool) -> str:
    """Inputs are normalised with the statistics the starting weights saw: ImageNet's for torchvision's."""
    return "imagenet" if pretrained else "cifar100"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run: the model's spec and the training settings."""

    spec: specs.Spec = field(default_factory=lambda: ScalingSpec.official("b0"))
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    ema: float = 0.0
    augment: str = "standard"
    subset: int | None = None
    eval_subset: int | None = None
    val_size: int | None = None  # None: CIFAR_VAL_SIZE, or VAL_FRACTION of a folder (val_count)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    channels_last: bool = True
    pretrained: bool = False
    data_dir: str | None = None
    dataset: str = "cifar100"
    init_from: str | None = None  # a finished run's folder: start from its weights
    checkpoint_minutes: float = 10.0
    eval_batch_size: int = 256

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ JSON form
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> TrainConfig:
        """The config a JSON object describes; ``ValueError`` naming the field when it does not describe one."""
        if not isinstance(data, dict):
            raise ValueError(f"config: expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        if not isinstance(data.get("spec", {}), dict):
            raise ValueError("spec: expected a JSON object")
        values = dict(data)
        if "spec" in values:
            try:
                values["spec"] = specs.from_dict(values["spec"])
            except TypeError as exc:
                raise ValueError(f"spec: {exc}") from exc
        _check_types(values)
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """From a JSON file: a config object, or a job file holding one under ``"config"``."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"config: cannot read {path} ({exc})") from exc
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]
        return cls.from_dict(data)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """``ValueError`` naming the setting; everything is checked before any data loads."""
        _check_types(self.to_dict() | {"spec": self.spec})
        checks = [
            (1 <= self.epochs <= MAX_EPOCHS, "epochs", f"must be 1 to {MAX_EPOCHS:,}"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.eval_batch_size >= 1, "eval_batch_size", "must be at least 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr", "must be a positive number"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (0 <= self.weight_decay < 1, "weight_decay", "must be in [0, 1) (5e-4 is usual)"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)"),
            (0 <= self.warmup_epochs <= MAX_EPOCHS, "warmup_epochs", "must be 0 or more (and finite)"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.ema < 1, "ema", "must be in [0, 1) (0 turns it off)"),
            (self.augment in AUGMENTATIONS, "augment", f"must be one of {', '.join(AUGMENTATIONS)}"),
            (self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}"),
            (self.dataset in DATASETS, "dataset", f"must be one of {', '.join(DATASETS)}"),
            (self.subset is None or self.subset >= 1, "subset", "must be at least 1"),
            (self.eval_subset is None or self.eval_subset >= 1, "eval_subset", "must be at least 1"),
            (self.val_size is None or self.val_size >= 0, "val_size", "must be 0 or more (or left out)"),
            (0 <= self.checkpoint_minutes <= 24 * 60, "checkpoint_minutes", "must be 0 to 1,440"),
            (0 <= self.seed < 2**63, "seed", "must be 0 to 2**63 - 1"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise ValueError(f"{name}: {message}, got {getattr(self, name)!r}")
        self._validate_start()
        if self.dataset == "cifar100" and self.spec.num_classes < CIFAR100_CLASSES:
            raise ValueError(f"num_classes: CIFAR-100 labels go up to {CIFAR100_CLASSES - 1}, so "
                             f"{self.spec.num_classes} classes cannot fit")
        specs.card(self.spec)  # the size guard: too large to build is refused here, not after loading data
        check_device(self.device)

    def _validate_start(self) -> None:
        if self.init_from is not None:
            if self.pretrained:
                raise ValueError("init_from: start from ImageNet weights (pretrained) or from a run, not both")
            theirs = _run_spec(Path(self.init_from))
            if theirs.replace(num_classes=self.spec.num_classes) != self.spec:
                raise ValueError(f"init_from: that run trained {theirs.name} ({theirs.resolution} px, "
                                 f"{theirs.normalization} inputs); start from it with the same model, not "
                                 f"{self.spec.name} ({self.spec.resolution} px, {self.spec.normalization} inputs)")
        if not self.pretrained:
            return
        if isinstance(self.spec, BaselineSpec) and not self.spec.has_imagenet_weights:
            raise ValueError(f"pretrained: torchvision's ImageNet weights fit {self.spec.name} only in the imagenet "
                             "geometry (its cifar stem is new); choose geometry imagenet or train it from scratch")
        if not isinstance(self.spec, BaselineSpec) and not self.spec.is_official:
            raise ValueError(f"pretrained: ImageNet weights exist only for the official variants B0-B7 and V2-S/M/L "
                             f"(and the baselines); {self.spec.name} is a custom spec (train it from scratch)")
        if not isinstance(self.spec, BaselineSpec) and not self.spec.paper_block:
            raise ValueError(f"pretrained: ImageNet weights exist only for {self.spec.variant.upper()}'s own blocks; "
                             f"{self.spec.name} changes them (train it from scratch, or from a finished run)")
        if self.spec.normalization != normalization_for(pretrained=True):
            raise ValueError("pretrained: needs the spec's normalization='imagenet' (the statistics the weights "
                             "were trained with)")


def _run_spec(run_dir: Path) -> specs.Spec:
    """The spec in a run folder's config.json (read here without the run readers: they import this module)."""
    try:
        if run_dir.is_symlink():
            raise ValueError("a symbolic link; refused")
        saved = files.load_json(run_dir / "config.json")  # bounded, no links; files.Damaged is a ValueError
        if saved is None:
            raise ValueError("it has no config.json")
        return specs.from_dict(saved["spec"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"init_from: {run_dir} is not a finished run's folder ({exc})") from exc


def _held(config: TrainConfig, n_train: int) -> int:
    if config.val_size is not None:
        return config.val_size
    return round(VAL_FRACTION * n_train) if config.dataset == "folder" else CIFAR_VAL_SIZE


def val_count(config: TrainConfig, n_train: int) -> int:
    """Training images held out for validation: ``val_size`` when given, else CIFAR-100's 5,000 or a tenth of a
    folder's training images. ``ValueError`` with the fix when nothing would be left to train on."""
    held = _held(config, n_train)
    if n_train - held < 1:
        raise ValueError(f"val_size: holding out {held:,} of the {n_train:,} training images leaves none to train "
                         f"on; give --val-size {n_train // 10:,} (or 0 for no validation split)")
    return held


def fit_to_dataset(config: TrainConfig, n_train: int, n_test: int) -> tuple[TrainConfig, str | None]:
    """``config`` with its image counts cut to what the dataset has, and a note saying what changed (or None).

    A preset written for the 50,000 CIFAR-100 training images must not ask a 1,437-image copy for 2,000 and
    quietly train on what is left: the counts are clamped and the user is told.
    """
    held = _held(config, n_train)
    val = min(held, n_train // 5)
    subset = None if config.subset is None else min(config.subset, n_train - val)
    evals = None if config.eval_subset is None else min(config.eval_subset, max(1, min(val, n_test) or n_test))
    fitted = config.replace(val_size=config.val_size if val == held else val, subset=subset, eval_subset=evals)
    if fitted == config:
        return config, None
    return fitted, (f"The dataset has {n_train:,} training and {n_test:,} test images, so this run holds out {val:,} "
                    f"for validation, trains on {subset or n_train - val:,} and evaluates on "
                    f"{evals or 'all the'} images.")


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_types(values: dict[str, Any]) -> None:
    """Each field has its declared JSON type, by the file schemas' strict rules (a damaged or hand-edited file is
    refused by name, never half-used: no ``true`` for a count, no NaN for a rate)."""
    hints = _hints()
    for name, value in values.items():
        if name == "spec":
            if not specs.is_spec(value):
                raise ValueError(f"spec: expected a model spec, got {value!r}")
            continue
        check_value(name, hints[name], value)
