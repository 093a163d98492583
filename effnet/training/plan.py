"""From choices to runs: (dataset, start mode, models chosen) -> specs -> configs, for the CLI and the Train page alike.

The two front ends ask the same questions: how many classes does the dataset have, which input statistics do the
starting weights expect, and which specs do the chosen variants, baselines and custom φ make. Each answer is
written here once; ``effnet.train``'s flags and the Train page's form only collect the choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.arch.baselines import BaselineSpec
from effnet.arch.card import at_equal_macs
from effnet.arch.scaling import PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, SE_RATIO, ScalingSpec
from effnet.arch.specs import Spec
from effnet.base import files
from effnet.data.cifar import DataError, data_dir
from effnet.training import runs
from effnet.training.config import CIFAR100_CLASSES, TrainConfig, normalization_for

# Where a run's weights start, keyed by what the code says; the values are what people read.
STARTS = {"scratch": "from scratch", "imagenet": "from ImageNet weights (fine-tune)",
          "run": "from a finished run (fine-tune)"}


def class_count(dataset: str, folder: str | Path | None) -> int:
    """CIFAR-100's 100 classes, or the number of class folders of your own images (``ValueError`` if unreadable)."""
    if dataset != "folder":
        return CIFAR100_CLASSES
    from effnet.data.folder import count_classes

    try:
        return count_classes(data_dir(None if folder is None else str(folder)))
    except DataError as exc:
        raise ValueError(f"data_dir: {exc}") from exc


def input_statistics(start: str, init_from: str | Path | None = None) -> str:
    """The normalisation the starting weights saw: ImageNet's, the run's started from, or CIFAR-100's."""
    if start == "run":
        if not init_from:
            raise ValueError("init_from: choose the finished run to start from")
        try:
            spec = runs.load_config(Path(init_from))[0]
        except (files.Damaged, OSError) as exc:
            raise ValueError(f"init_from: {init_from} is not a readable run folder ({exc})") from exc
        if spec is None:
            raise ValueError(f"init_from: {init_from} is not a run folder (it has no config.json)")
        return spec.normalization
    return normalization_for(start == "imagenet")


@dataclass(frozen=True)
class Custom:
    """A custom compound-scaled spec: φ and the three bases."""

    phi: float
    alpha: float = PAPER_ALPHA
    beta: float = PAPER_BETA
    gamma: float = PAPER_GAMMA


@dataclass(frozen=True)
class BlockChoice:
    """The block an EfficientNet is built of (``ScalingSpec``'s block fields); the default is the paper's."""

    attention: str = "se"
    se_ratio: float = SE_RATIO
    fused_stages: int | None = None

    @classmethod
    def of(cls, attention: str | None, se_ratio: float | None, fused_stages: int | None) -> BlockChoice:
        """From optional flags: each one not given keeps the paper's."""
        return cls("se" if attention is None else attention, SE_RATIO if se_ratio is None else se_ratio, fused_stages)

    def fields(self) -> dict[str, Any]:
        return dict(attention=self.attention, se_ratio=self.se_ratio, fused_stages=self.fused_stages)


def specs(variants: list[str], baselines: list[str], custom: Custom | None, *, scaling: str, geometry: str,
          num_classes: int, normalization: str, base_resolution: int | None = None, output_stride: int | None = None,
          dropout: float | None = None, block: BlockChoice = BlockChoice()) -> list[Spec]:
    """The specs chosen: official variants (scaled by ``scaling`` at their budget), baselines, one custom spec
    (``base_resolution``, ``output_stride``, ``dropout``: the command line's finer knobs; None keeps the defaults),
    the EfficientNets all built of ``block``."""
    common: dict[str, Any] = dict(geometry=geometry, num_classes=num_classes, normalization=normalization,
                                  base_resolution=base_resolution)
    scaled = common | dict(output_stride=output_stride, dropout=dropout) | block.fields()
    # One dimension alone is scaled to the compound model's actual multiply-adds (card.at_equal_macs), as in the
    # studies: the nominal 2^phi made "B3 by depth" 1.73x B3's cost.
    chosen: list[Spec] = [at_equal_macs(ScalingSpec.official(v.lower(), **scaled), scaling) for v in variants]
    chosen += [BaselineSpec(model=m, **common) for m in baselines]
    if custom is not None:
        chosen.append(at_equal_macs(ScalingSpec(phi=custom.phi, alpha=custom.alpha, beta=custom.beta,
                                                gamma=custom.gamma, **scaled), scaling))
    return chosen


def configs(chosen: list[Spec], settings: dict[str, Any], *, start: str, dataset: str,
            folder: str | Path | None = None, init_from: str | Path | None = None) -> list[TrainConfig]:
    """One ``TrainConfig`` per spec: the same settings, the start mode and the dataset spelled as the trainer reads them."""
    where = dict(pretrained=start == "imagenet", init_from=str(init_from) if start == "run" else None,
                 dataset=dataset, data_dir=None if folder is None else str(folder))
    return [TrainConfig(spec=spec, **settings, **where) for spec in chosen]
