"""Command-line flags that describe a spec, shared by ``effnet card``, ``effnet.train`` and ``effnet.experiments.study``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from effnet.arch.baselines import MODELS, BaselineSpec
from effnet.arch.scaling import (
    GEOMETRIES,
    OFFICIAL,
    PAPER_ALPHA,
    PAPER_BETA,
    PAPER_GAMMA,
    SCALINGS,
    ScalingSpec,
)
from effnet.arch.specs import Spec
from effnet.base import files
from effnet.data.cifar import DataError, data_dir
from effnet.training import runs
from effnet.training.config import AUGMENTATIONS, DATASETS, PRECISIONS, SCHEDULES, TrainConfig, normalization_for


def add_spec_arguments(parser: argparse.ArgumentParser, num_classes_default: int | None = 100) -> None:
    """``--variant`` or ``--phi/--alpha/--beta/--gamma``, plus geometry, classes and scaling method."""
    g = parser.add_argument_group("model spec")
    g.add_argument("--model", choices=["efficientnet", *MODELS], type=str.lower, default="efficientnet",
                   help="a conventional network instead of EfficientNet (torchvision's; --geometry, --num-classes "
                        "and --base-resolution apply)")
    g.add_argument("--variant", choices=sorted(OFFICIAL), type=str.lower, help="an official variant (b0-b7)")
    g.add_argument("--phi", type=float, help="compound coefficient of a custom spec")
    g.add_argument("--alpha", type=float, default=PAPER_ALPHA, help="depth base (default %(default)s)")
    g.add_argument("--beta", type=float, default=PAPER_BETA, help="width base (default %(default)s)")
    g.add_argument("--gamma", type=float, default=PAPER_GAMMA, help="resolution base (default %(default)s)")
    g.add_argument("--geometry", choices=GEOMETRIES, default="cifar")
    g.add_argument("--num-classes", type=int, default=num_classes_default)
    g.add_argument("--base-resolution", type=int, help="resolution at phi=0 (224 imagenet, 32 cifar)")
    g.add_argument("--output-stride", type=int, choices=(8, 16, 32))
    g.add_argument("--dropout", type=float)
    g.add_argument("--scaling", choices=SCALINGS, default="compound",
                   help="compound, or one dimension alone at the same FLOPs budget (2^phi)")


def spec_from_args(args: argparse.Namespace, num_classes: int | None = None,
                   **extra: object) -> ScalingSpec | BaselineSpec:
    """The spec the flags describe; ``ValueError`` (naming the field) when they don't make one."""
    if getattr(args, "model", "efficientnet") != "efficientnet":
        return _baseline_from_args(args, num_classes, **extra)
    if (args.variant is None) == (args.phi is None):
        raise ValueError("variant: give either --variant b0..b7 or --phi (with --alpha/--beta/--gamma)")
    common = dict(
        geometry=args.geometry,
        num_classes=num_classes if num_classes is not None else args.num_classes,
        base_resolution=args.base_resolution,
        output_stride=args.output_stride,
        dropout=args.dropout,
        **extra,
    )
    if args.variant is not None:
        return ScalingSpec.official(args.variant, **common).with_scaling(args.scaling)
    return ScalingSpec(phi=args.phi, alpha=args.alpha, beta=args.beta, gamma=args.gamma, scaling=args.scaling, **common)


def _baseline_from_args(args: argparse.Namespace, num_classes: int | None, **extra: object) -> BaselineSpec:
    given = [flag for flag, value in (("--variant", args.variant), ("--phi", args.phi),
                                      ("--output-stride", args.output_stride), ("--dropout", args.dropout))
             if value is not None]
    if args.scaling != "compound":
        given.append("--scaling")
    if given:
        raise ValueError(f"model: {', '.join(given)} describe an EfficientNet, not {MODELS[args.model][0]}")
    return BaselineSpec(model=args.model, geometry=args.geometry,
                        num_classes=num_classes if num_classes is not None else args.num_classes,
                        base_resolution=args.base_resolution, **extra)


# ----------------------------------------------------------------------------- command line
def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The training settings (everything of ``TrainConfig`` but the spec), shared with ``effnet.experiments.study``."""
    d = TrainConfig()
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process under torchrun")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--no-nesterov", dest="nesterov", action="store_false", help="plain momentum")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="not applied to BN and biases")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    g.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the weights, e.g. 0.999 (0: off)")
    g.add_argument("--augment", choices=AUGMENTATIONS, default=d.augment)
    g.add_argument("--subset", type=int, help="train on the first N training images")
    g.add_argument("--eval-subset", type=int, help="evaluate on the first N validation and test images")
    g.add_argument("--val-size", type=int, default=d.val_size,
                   help="training images held out for validation (default: 5,000 of CIFAR-100, a tenth of a folder's; "
                        "0: none, and the last epoch is reported)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=None, help="auto (CUDA if present; the default), cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="auto: bf16 autocast on CUDA, fp32 elsewhere; bf16 also works on the CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; slow to start on CPU)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    g.add_argument("--pretrained", action="store_true", help="start from torchvision's ImageNet weights")
    g.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                   help="cifar100, or folder: your own images, one subfolder per class (see --data-dir)")
    g.add_argument("--data-dir", help="folder with cifar-100-python, or your class folders with --dataset folder "
                                      "(default: $EFFNET_DATA or ./data)")
    g.add_argument("--init-from", help="start from a finished run's weights (its backbone; a new classifier "
                                       "when the class count differs)")
    g.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes,
                   help="also checkpoint within an epoch this often (0: every step)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)


def config_from_args(args: argparse.Namespace, spec: Spec) -> TrainConfig:
    """The ``TrainConfig`` of ``add_training_arguments``' flags around ``spec``."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("spec", "device")]
    return TrainConfig(spec=spec, device=args.device or "auto", **{n: getattr(args, n) for n in names})



def num_classes_from_args(args: argparse.Namespace) -> int:
    """--num-classes, else the folder's class count (--dataset folder), else CIFAR-100's 100."""
    if args.num_classes:
        return args.num_classes
    if args.dataset == "folder":
        from effnet.data.folder import count_classes

        try:
            return count_classes(data_dir(args.data_dir))
        except DataError as exc:
            raise ValueError(f"data_dir: {exc}") from exc
    return 100


def normalization_from_args(args: argparse.Namespace) -> str:
    """The input statistics the starting weights saw: ImageNet's, or those of the run started from."""
    if args.init_from and not args.pretrained:
        try:
            spec = runs.load_config(Path(args.init_from))[0]
        except (files.Damaged, OSError) as exc:
            raise ValueError(f"init_from: {args.init_from} is not a readable run folder ({exc})") from exc
        if spec is None:
            raise ValueError(f"init_from: {args.init_from} is not a run folder (it has no config.json)")
        return spec.normalization
    return normalization_for(args.pretrained)

