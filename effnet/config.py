"""A training run's settings: ``TrainConfig``, its validation and its JSON form.

No torch here: the app checks a config (and the queue stores one) without paying for importing
torch. The same JSON is the job file the queue hands to the trainer (``python -m effnet.train
--config job.json``) and the ``train`` part of a run's ``config.json``, so a run can be read,
resumed or repeated from its folder alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet.card import model_card
from effnet.scaling import ScalingSpec

SCHEDULES = ("cosine", "onecycle", "constant")
AUGMENTATIONS = ("none", "standard", "cutout")
# auto: bf16 autocast on CUDA, fp32 elsewhere. bf16 on the CPU runs the accelerator path where no GPU is.
PRECISIONS = ("auto", "bf16", "fp32")
# cifar100: the study's data; folder: your own images, one subfolder per class (effnet.folder).
DATASETS = ("cifar100", "folder")
CIFAR100_CLASSES = 100
# The quick CPU demo's training settings (Train and Study pages): a few minutes on a laptop.
QUICK_DEMO = {"epochs": 3, "batch_size": 64, "lr": 0.05, "subset": 2000, "eval_subset": 500, "val_size": 1000}


def normalization_for(pretrained: bool) -> str:
    """Inputs are normalised with the statistics the starting weights saw: ImageNet's for torchvision's."""
    return "imagenet" if pretrained else "cifar100"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run: the model's spec and the training settings."""

    spec: ScalingSpec = field(default_factory=lambda: ScalingSpec.official("b0"))
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
    val_size: int = 5000
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
                values["spec"] = ScalingSpec.from_dict(values["spec"])
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
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.eval_batch_size >= 1, "eval_batch_size", "must be at least 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr", "must be a positive number"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be 0 or more"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)"),
            (self.warmup_epochs >= 0, "warmup_epochs", "must be 0 or more"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.ema < 1, "ema", "must be in [0, 1) (0 turns it off)"),
            (self.augment in AUGMENTATIONS, "augment", f"must be one of {', '.join(AUGMENTATIONS)}"),
            (self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}"),
            (self.dataset in DATASETS, "dataset", f"must be one of {', '.join(DATASETS)}"),
            (self.subset is None or self.subset >= 1, "subset", "must be at least 1"),
            (self.eval_subset is None or self.eval_subset >= 1, "eval_subset", "must be at least 1"),
            (self.val_size >= 0, "val_size", "must be 0 or more"),
            (self.checkpoint_minutes >= 0, "checkpoint_minutes", "must be 0 or more"),
            (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "device",
             "must be auto, cpu or cuda[:N]"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise ValueError(f"{name}: {message}, got {getattr(self, name)!r}")
        self._validate_start()
        if self.dataset == "cifar100" and self.spec.num_classes < CIFAR100_CLASSES:
            raise ValueError(f"num_classes: CIFAR-100 labels go up to {CIFAR100_CLASSES - 1}, so "
                             f"{self.spec.num_classes} classes cannot fit")
        model_card(self.spec)  # the size guard: too large to build is refused here, not after loading data
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError("device: CUDA was asked for but no GPU is available here (use --device cpu or auto)")

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
        if not self.spec.is_official:
            raise ValueError(f"pretrained: ImageNet weights exist only for the official variants B0-B7; "
                             f"{self.spec.name} is a custom spec (train it from scratch)")
        if self.spec.normalization != normalization_for(pretrained=True):
            raise ValueError("pretrained: needs the spec's normalization='imagenet' (the statistics the weights "
                             "were trained with)")


def _run_spec(run_dir: Path) -> ScalingSpec:
    """The spec in a run folder's config.json (read here without the run readers: they import this module)."""
    path = run_dir / "config.json"
    try:
        if run_dir.is_symlink() or path.is_symlink() or path.stat().st_size > 1 << 20:
            raise ValueError("refused")
        return ScalingSpec.from_dict(json.loads(path.read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"init_from: {run_dir} is not a finished run's folder ({exc})") from exc


def fit_to_dataset(config: TrainConfig, n_train: int, n_test: int) -> tuple[TrainConfig, str | None]:
    """``config`` with its image counts cut to what the dataset has, and a note saying what changed (or None).

    A preset written for the 50,000 CIFAR-100 training images must not ask a 1,437-image copy for 2,000 and
    quietly train on what is left: the counts are clamped and the user is told.
    """
    val = min(config.val_size, n_train // 5)
    subset = None if config.subset is None else min(config.subset, n_train - val)
    evals = None if config.eval_subset is None else min(config.eval_subset, max(1, min(val, n_test) or n_test))
    fitted = config.replace(val_size=val, subset=subset, eval_subset=evals)
    if fitted == config:
        return config, None
    return fitted, (f"The dataset has {n_train:,} training and {n_test:,} test images, so this run holds out {val:,} "
                    f"for validation, trains on {subset or n_train - val:,} and evaluates on "
                    f"{evals or 'all the'} images.")


def _check_types(values: dict[str, Any]) -> None:
    """Each field has its declared JSON type (a damaged or hand-edited file is refused by name, never half-used)."""
    hints = typing.get_type_hints(TrainConfig)
    for name, value in values.items():
        hint = hints[name]
        allowed = typing.get_args(hint) or (hint,)
        if value is None and type(None) in allowed:
            continue
        if bool in allowed:
            ok = isinstance(value, bool)
        elif float in allowed:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif int in allowed:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, tuple(a for a in allowed if a is not type(None)))
        if not ok:
            raise ValueError(f"{name}: expected {_type_name(hint)}, got {value!r}")


def _type_name(hint: object) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
             ScalingSpec: "a model spec"}
    parts = [names.get(a, str(a)) for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    return " or ".join(parts) + (" or null" if type(None) in typing.get_args(hint) else "")
