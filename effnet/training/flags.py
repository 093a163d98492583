"""Command-line flags that describe a spec, shared by ``effnet card``, ``effnet.train`` and ``effnet.experiments.study``."""

from __future__ import annotations

import argparse
import dataclasses

from effnet.arch.baselines import MODELS
from effnet.arch.scaling import (
    ATTENTIONS,
    GEOMETRIES,
    PAPER_ALPHA,
    PAPER_BETA,
    PAPER_GAMMA,
    SCALINGS,
    SE_RATIO,
    VARIANTS,
)
from effnet.arch.specs import Spec
from effnet.training import plan
from effnet.training.config import AUGMENTATIONS, DATASETS, PRECISIONS, SCHEDULES, TrainConfig


def add_spec_arguments(parser: argparse.ArgumentParser, num_classes_default: int | None = 100) -> None:
    """``--variant`` or ``--phi/--alpha/--beta/--gamma``, plus geometry, classes and scaling method."""
    g = parser.add_argument_group("model spec")
    g.add_argument("--model", choices=["efficientnet", *MODELS], type=str.lower, default="efficientnet",
                   help="a conventional network instead of EfficientNet (torchvision's; --geometry, --num-classes "
                        "and --base-resolution apply)")
    g.add_argument("--variant", choices=VARIANTS, type=str.lower, help="an official variant (b0-b7, v2-s, v2-m, v2-l)")
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
                   help="compound, or one dimension alone at the compound model's actual multiply-adds (card.at_equal_macs)")
    b = parser.add_argument_group("block (defaults: the paper's MBConv with SE 0.25)")
    b.add_argument("--attention", type=str.lower, metavar="{" + ",".join(ATTENTIONS) + "}",
                   help="attention in every MBConv stage, or one per stage joined by commas (se,se,eca,...)")
    b.add_argument("--se-ratio", type=float, help=f"SE's (and CBAM's) bottleneck ratio (default {SE_RATIO})")
    b.add_argument("--fused-stages", type=int, metavar="N",
                   help="the first N stages Fused-MBConv (default: none for b0-b7 and custom specs, 3 for V2)")


def spec_from_args(args: argparse.Namespace, num_classes: int | None = None,
                   normalization: str | None = None) -> Spec:
    """The spec the flags describe (through ``plan.specs``, as the Train page's); ``ValueError`` (naming the field)
    when they don't make one."""
    baseline = getattr(args, "model", "efficientnet") != "efficientnet"
    if baseline:
        given = [flag for flag, value in (("--variant", args.variant), ("--phi", args.phi),
                                          ("--output-stride", args.output_stride), ("--dropout", args.dropout),
                                          ("--attention", args.attention), ("--se-ratio", args.se_ratio),
                                          ("--fused-stages", args.fused_stages))
                 if value is not None] + (["--scaling"] if args.scaling != "compound" else [])
        if given:
            raise ValueError(f"model: {', '.join(given)} {'describes' if len(given) == 1 else 'describe'} an EfficientNet, "
                             f"not {MODELS[args.model][0]}")
    elif (args.variant is None) == (args.phi is None):
        raise ValueError("variant: give either --variant (b0..b7, v2-s/m/l) or --phi (with --alpha/--beta/--gamma)")
    custom = plan.Custom(args.phi, args.alpha, args.beta, args.gamma) if args.phi is not None else None
    return plan.specs([args.variant] if args.variant else [], [args.model] if baseline else [],
                      None if baseline else custom, scaling=args.scaling, geometry=args.geometry,
                      num_classes=num_classes if num_classes is not None else args.num_classes,
                      normalization=normalization or plan.input_statistics("scratch"),
                      base_resolution=args.base_resolution, output_stride=args.output_stride, dropout=args.dropout,
                      block=plan.BlockChoice.of(args.attention, args.se_ratio, args.fused_stages))[0]


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
    """--num-classes, else the dataset's class count (``plan.class_count``)."""
    return args.num_classes if args.num_classes is not None else plan.class_count(args.dataset, args.data_dir)


def start_from_args(args: argparse.Namespace) -> str:
    """The start mode (a key of ``plan.STARTS``) that --pretrained and --init-from describe."""
    return "imagenet" if args.pretrained else "run" if args.init_from else "scratch"


def normalization_from_args(args: argparse.Namespace) -> str:
    """The input statistics the starting weights saw (``plan.input_statistics``)."""
    return plan.input_statistics(start_from_args(args), args.init_from)
