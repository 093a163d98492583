"""Train a model on CIFAR-100 or your own images: ``python -m effnet.train --variant b0 --epochs 3 ...``.

Read top to bottom: the command line, the learning-rate schedule and seeds, one step, evaluation,
the run's bookkeeping, then ``Run`` (a run in progress, step by step) and ``train``.

Design choices, and why:
- The data lives on the training device as uint8 and is augmented there in batches
  (``effnet.step.augment``); preprocessing is the spec's one function (``effnet.preprocess``).
- Every random choice is a function of (seed, epoch, step): the epoch's shuffle comes from a
  generator seeded by (seed, epoch) and each step reseeds torch before augmenting and running
  the model (dropout, stochastic depth). A resumed run therefore replays exactly what an
  uninterrupted one would have done, and on the CPU ends with bitwise identical weights.
- Checkpoints hold the exact position within the epoch (step, running sums, time spent) and are
  written atomically at every epoch end, every ``--checkpoint-minutes`` within an epoch, and on SIGTERM.
- ``metrics.jsonl`` is rewritten from the rows stored in the checkpoint, so an epoch appears
  exactly once however often the run was killed and resumed.
- The accelerator path (bf16 autocast, channels_last) is chosen by ``--precision`` and
  ``--no-channels-last``, not by the device, so the CPU runs it too (``--precision bf16``) and tests keep it alive.
- Under ``torchrun`` the same command trains with DDP (gloo on CPU, NCCL on GPU); rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from effnet import files, locks, runs
from effnet.checkpoint import CheckpointError, check_disk, load_checkpoint, save_checkpoint
from effnet.config import AUGMENTATIONS, DATASETS, PRECISIONS, SCHEDULES, TrainConfig, normalization_for, val_count
from effnet.data import Cifar100, DataError, Split, data_dir, load_cifar100, split_train_val
from effnet.evaluate import PRECISE_BN_IMAGES, evaluate, precise_bn
from effnet.model import build_model, head_prefix, load_pretrained
from effnet.spec_flags import add_spec_arguments, spec_from_args
from effnet.specs import Spec
from effnet.step import EMA, StaticStep, lr_at, make_optimizer, step_seed, train_step

GRAPHS_ENV = "EFFNET_CUDA_GRAPHS"
# With --config, the file is the whole config; only where to write and where to run may be given beside it.
CONFIG_COMPANIONS = ("--config", "--out", "--resume", "--device", "--data-dir")


# ----------------------------------------------------------------------------- command line
def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The training settings (everything of ``TrainConfig`` but the spec), shared with ``effnet.study``."""
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m effnet.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="a JSON config (or a queue's job.json) instead of the flags below")
    add_spec_arguments(p, num_classes_default=None)
    add_training_arguments(p)
    p.add_argument("--out", required=True, help="run folder, e.g. checkpoints/my-run")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    return p


def num_classes_from_args(args: argparse.Namespace) -> int:
    """--num-classes, else the folder's class count (--dataset folder), else CIFAR-100's 100."""
    if args.num_classes:
        return args.num_classes
    if args.dataset == "folder":
        from effnet.folder import count_classes

        try:
            return count_classes(data_dir(args.data_dir))
        except DataError as exc:
            raise ValueError(f"data_dir: {exc}") from exc
    return 100


def _normalization(args: argparse.Namespace) -> str:
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


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path, bool]:
    """(config, run folder, resume) from the flags, or from ``--config FILE`` plus ``--out``."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        if args.config is not None:
            given = [a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")]
            extra = sorted(set(given) - set(CONFIG_COMPANIONS))
            if extra:
                raise ValueError(f"config: with --config, the file holds the settings; drop {', '.join(extra)}")
            config = TrainConfig.load(Path(args.config))
            config = config.replace(**{k: v for k, v in (("device", args.device), ("data_dir", args.data_dir))
                                       if v is not None})
        else:
            config = config_from_args(args, spec_from_args(args, num_classes=num_classes_from_args(args),
                                                           normalization=_normalization(args)))
        config.validate()
        out = _out_folder(args.out)
    except ValueError as exc:
        p.error(str(exc))
    return config, out, args.resume


def _out_folder(text: str) -> Path:
    """The run folder ``--out`` names: not empty (that would train into the current folder), not a file."""
    if not text.strip():
        raise ValueError("out: give the run's folder, e.g. --out checkpoints/my-run")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} is a file, not a run folder")
    return out


# ----------------------------------------------------------------------------- run bookkeeping
class Status:
    """``status.json`` of a run: updated by the loop, refreshed by a heartbeat thread every few seconds."""

    HEARTBEAT_SECONDS = 5.0

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / runs.STATUS
        self.enabled = enabled
        self.lock = threading.Lock()
        # The queue's generation stays: it tells the runner this status belongs to the run it started.
        kept = {k: v for k, v in (files.read_json(self.path) or {}).items()
                if k in ("generation", "slot", "slurm_job_id", "slurm_batch")}
        self.fields: dict[str, Any] = {**kept, "state": "starting", "pid": os.getpid(), "started": time.time()}
        if os.environ.get("SLURM_JOB_ID"):  # a Slurm job: where it runs, for the pages (its pid is the node's)
            self.fields |= {"slurm_state": "RUNNING", "node": os.environ.get("SLURMD_NODENAME", "?")}
        self.last_write = 0.0
        self._stop = threading.Event()
        if enabled:
            threading.Thread(target=self._beat, daemon=True).start()

    def update(self, force: bool = True, **fields: Any) -> None:
        with self.lock:
            self.fields.update(fields)
            if fields.get("state") in runs.ENDED:
                self.fields["ended"] = time.time()
            if self.enabled and (force or time.time() - self.last_write > 1.0):
                self._write()

    def _write(self) -> None:
        self.fields["heartbeat"] = self.last_write = time.time()
        files.write_status(self.path, self.fields)

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_SECONDS):
            with self.lock, contextlib.suppress(OSError):  # a full disk: the loop itself will report it
                self._write()

    def close(self) -> None:
        """Stop the heartbeat: after this, status.json changes only when the process says so."""
        self._stop.set()
        with self.lock:
            pass


class Stopwatch:
    """Seconds spent per phase ("train" steps, the whole "epoch"), carried across checkpoints.

    ``read()`` includes the phases still running, so a checkpoint taken mid-epoch stores the time
    so far and a resumed epoch reports its whole duration.
    """

    def __init__(self, totals: dict[str, float] | None = None) -> None:
        self.totals = {"train": 0.0, "epoch": 0.0, **(totals or {})}
        self._since: dict[str, float] = {}

    def start(self, phase: str) -> None:
        self._since[phase] = time.monotonic()

    def stop(self, phase: str) -> None:
        self.totals[phase] += time.monotonic() - self._since.pop(phase)

    def read(self) -> dict[str, float]:
        now = time.monotonic()
        return {k: v + (now - self._since[k] if k in self._since else 0.0) for k, v in self.totals.items()}


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


@dataclass(frozen=True)
class Data:
    """The run's three splits on its device, and CIFAR-100's class names."""

    train: Split
    val: Split
    test: Split
    classes: dict[str, Any]


def load_dataset(config: TrainConfig) -> Cifar100:
    """CIFAR-100, or the class folders of ``--dataset folder`` decoded at the spec's resolution (cached)."""
    if config.dataset != "folder":
        return load_cifar100(config.data_dir)
    from effnet.folder import load_folder

    data, skipped = load_folder(data_dir(config.data_dir), config.spec.resolution, config.seed)
    if skipped:
        print(f"{skipped} file(s) in {data_dir(config.data_dir)} are not readable images: skipped", flush=True)
    if len(data.fine_names) != config.spec.num_classes:
        raise DataError(f"{data_dir(config.data_dir)} has {len(data.fine_names)} classes but the model has "
                        f"{config.spec.num_classes} outputs (leave --num-classes out to take the folder's count)")
    return data


def load_data(config: TrainConfig, device: torch.device, data: Cifar100 | None = None) -> Data:
    """Held-out validation split, optional subsets, everything on the device as uint8 (``data``: the dataset
    when it is already loaded)."""
    data = data if data is not None else load_dataset(config)
    train_idx, val_idx = split_train_val(len(data.train), val_count(config, len(data.train)))
    if config.subset is not None:
        train_idx = train_idx[: config.subset]
    n_eval = config.eval_subset
    classes = {"fine": data.fine_names, "coarse": data.coarse_names, "fine_to_coarse": data.fine_to_coarse}
    return Data(data.train.take(train_idx).to(device), data.train.take(val_idx[:n_eval]).to(device),
                data.test.take(torch.arange(len(data.test))[:n_eval]).to(device), classes)


def weights_from_run(spec: Spec, run_dir: Path) -> nn.Module:
    """A new model for ``spec`` holding a finished run's weights: every tensor whose name and shape match.

    The classifier is new when the class count differs (fine-tuning a CIFAR-100 run on your own classes);
    anything else that differs means another backbone, which is refused rather than half copied.
    """
    source, source_spec = runs.load_model(run_dir)  # weights_only=True
    model = build_model(spec)
    theirs, ours = source.state_dict(), model.state_dict()
    head = {k for k in ours if k.startswith(head_prefix(spec))}
    differ = sorted(k for k in ours if k not in head and (k not in theirs or theirs[k].shape != ours[k].shape))
    if differ or source_spec.normalization != spec.normalization:
        raise ValueError(f"init_from: {run_dir.name} holds {source_spec.name} ({source_spec.resolution} px, "
                         f"{source_spec.normalization} inputs), a different backbone than {spec.name} "
                         f"({spec.resolution} px, {spec.normalization} inputs); first difference: "
                         f"{differ[0] if differ else 'normalization'}")
    copied = {k: v for k, v in theirs.items() if k in ours and v.shape == ours[k].shape}
    model.load_state_dict(copied, strict=False)
    print(f"started from {run_dir.name}: {len(copied)} of {len(ours)} tensors copied"
          + ("" if len(copied) == len(ours) else " (a new classifier)"), flush=True)
    return model


def initial_model(config: TrainConfig, fresh: bool) -> nn.Module:
    """The model a run starts from: ImageNet weights, a finished run's, or random. A resumed run takes every
    weight from its own checkpoint later, so it needs neither (and works offline)."""
    if fresh and config.pretrained:
        return load_pretrained(config.spec)
    if fresh and config.init_from:
        return weights_from_run(config.spec, Path(config.init_from))
    return build_model(config.spec)


class Diverged(ValueError):
    """The loss became NaN or infinite: the run fails saying so (never "finished" with NaN weights)."""


class Live:
    """Points within an epoch, so a class sees learning in the first minute, not when epoch 1 ends (``live.jsonl``).

    Every ~1/``POINTS`` of an epoch: the running training loss and top-1 over the steps since the last point.
    Runs of ``EARLY_EPOCHS`` epochs or fewer (class demos) also evaluate a validation slice of ``EARLY_IMAGES``
    every quarter of their first epoch, when the class is waiting for a first sign of learning (later epochs
    have their full evaluation at the end), on a measured copy of the model (``Run.measured_model``): the
    training state is not touched, so a resumed run replays bit for bit. The points are kept in the
    checkpoint, so after a resume the file holds each of them once.
    """

    POINTS, EARLY_EPOCHS, EARLY_IMAGES, EARLY_STEPS = 20, 5, 128, 20  # 128 images: a slice, for the first points

    def __init__(self, run: Run, rows: list[dict[str, Any]] | None = None) -> None:
        self.rows = list(rows or [])
        self.window = run._zero_acc()
        self.every = max(1, run.steps // self.POINTS)
        # An epoch of fewer than EARLY_STEPS steps is over in moments: its end-of-epoch evaluation is early enough.
        early = run.config.epochs <= self.EARLY_EPOCHS and len(run.data.val) > 0 and run.steps >= self.EARLY_STEPS
        self.quarters = {round(k * run.steps / 4) for k in (1, 2, 3)} if early else set()
        self.last_write = 0.0

    def after_step(self, run: Run) -> None:
        if run.step % self.every and (run.step not in self.quarters or run.epoch > 0):
            return
        seen = int(self.window["seen"].item())  # one host sync per point, not per step
        if seen:
            loss = self.window["loss"].item() / seen
            if not math.isfinite(loss):
                raise Diverged(f"training diverged: the loss became {loss} in epoch {run.epoch + 1}, step {run.step} "
                               f"(lower the learning rate, {run.config.lr:g}, or the weight decay)")
            self.rows.append({"epoch": run.epoch + 1, "step": run.step, "steps": run.steps, "train_loss": loss,
                              "train_top1": 100 * self.window["correct"].item() / seen})
            self.window = run._zero_acc()
        if run.step in self.quarters and run.epoch == 0 and run.main:
            run.status.update(phase="evaluating a validation slice")
            measured = run.measured_model(self.EARLY_IMAGES)
            val = evaluate(measured, run.data.val.take(torch.arange(min(self.EARLY_IMAGES, len(run.data.val)))),
                           run.config, run.amp)
            run.status.update(phase="train")
            self.rows.append({"epoch": run.epoch + 1, "step": run.step, "steps": run.steps, "val_top1": val["top1"],
                              "val_loss": val["loss"]})
        if run.main and time.monotonic() - self.last_write > 2.0:
            self.write(run)

    def write(self, run: Run) -> None:
        runs.write_metrics(run.out, self.rows, runs.LIVE)
        self.last_write = time.monotonic()


# ----------------------------------------------------------------------------- a run in progress
class Run:
    """One run: model, optimizer, EMA, where it stands, and the steps that move it on.

    ``train`` drives it: ``restore`` (if resuming), then per epoch ``train_epoch`` and ``end_epoch``.
    Each returns False when a stop was asked for; the run is then checkpointed at that exact point.
    """

    def __init__(self, config: TrainConfig, out: Path, data: Data, device: torch.device, world: int, rank: int,
                 status: Status, fresh: bool) -> None:
        self.config, self.out, self.data, self.device = config, out, data, device
        self.world, self.rank, self.main, self.status = world, rank, rank == 0, status
        self.stop = threading.Event()
        # SIGTERM (the app's Stop, or torchrun passing one on) asks for a checkpoint at the next step.
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        self.amp = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        torch.manual_seed(config.seed)
        # ImageNet weights only for a fresh run: a resumed one takes every weight from its checkpoint (offline too).
        self.model = initial_model(config, fresh).to(device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config)
        self.ema = EMA(self.model, config.ema) if config.ema > 0 else None
        self.step_model: nn.Module = self.model
        if world > 1:
            ids = [device] if device.type == "cuda" else None
            self.step_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if config.compile:
            self.step_model = torch.compile(self.step_model)
        # Whole-step CUDA graphs (step.StaticStep) on one GPU without DDP or compile; EFFNET_CUDA_GRAPHS=0: off.
        self.graphs = (device.type == "cuda" and world == 1 and not config.compile
                       and os.environ.get(GRAPHS_ENV, "1") != "0")
        self.static: StaticStep | None = None
        self.steps = max(1, len(data.train) // (config.batch_size * world))
        self.total_steps = self.steps * config.epochs
        self.warmup = min(int(config.warmup_epochs * self.steps), self.total_steps // 2)
        self.epoch, self.step = 0, 0
        self.rows: list[dict[str, Any]] = []
        self.acc = self._zero_acc()
        self.live = Live(self)
        self.clock = Stopwatch()
        self.last_save = time.monotonic()

    def _zero_acc(self) -> dict[str, Tensor]:
        d = self.device
        return {"loss": torch.zeros((), dtype=torch.float64, device=d), "correct": torch.zeros((), dtype=torch.long,
                device=d), "seen": torch.zeros((), dtype=torch.long, device=d)}

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue exactly where ``checkpoint`` stopped: weights, optimizer, EMA, position, sums, time."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.ema is not None and "ema" in checkpoint:
            self.ema.model.load_state_dict(checkpoint["ema"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.rows = list(checkpoint["rows"])
        self.acc = {k: v.to(self.device) for k, v in checkpoint["acc"].items()}
        self.live = Live(self, checkpoint.get("live"))
        if "live_window" in checkpoint:
            self.live.window = {k: v.to(self.device) for k, v in checkpoint["live_window"].items()}
        self.clock = Stopwatch(checkpoint["seconds"])

    def save(self) -> None:
        """Checkpoint the current position to last.pt (rank 0 only)."""
        if not self.main:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                 "step": self.step, "rows": self.rows, "live": self.live.rows,
                 "live_window": {k: v.cpu() for k, v in self.live.window.items()},
                 "acc": {k: v.cpu() for k, v in self.acc.items()}, "seconds": self.clock.read(),
                 "spec": self.config.spec.to_dict(), "config": self.config.to_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.model.state_dict()
        save_checkpoint(self.out / runs.LAST, state)
        self.last_save = time.monotonic()

    def stop_requested(self) -> bool:
        if self.world == 1:
            return self.stop.is_set()
        # All ranks must agree, or one would wait forever in the next collective.
        flag = torch.tensor(float(self.stop.is_set()), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _one_step(self, images: Tensor, labels: Tensor, lr: float, augment_seed: int) -> tuple[Tensor, Tensor]:
        """The training step: through CUDA graphs where they apply, else eagerly (the same body, ``StaticStep``)."""
        if self.graphs:
            if self.static is None:
                self.static = StaticStep(self.step_model, self.optimizer, self.config, images, labels, self.amp,
                                         capture=True)
            captured = self.static.graph is not None
            out = self.static(images, labels, lr, augment_seed)
            if not captured and (self.static.graph is not None or self.static.fallback):
                print("CUDA graphs: " + ("the whole step is captured and replayed" if self.static.graph is not None
                                         else f"not used, the step stays eager ({self.static.fallback})"), flush=True)
                self.graphs = self.static.graph is not None
            return out
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        gen = torch.Generator(device=self.device).manual_seed(augment_seed)
        return train_step(self.step_model, self.optimizer, images, labels, self.config, gen, self.amp)

    def _stopped(self) -> bool:
        self.save()
        if self.main:
            self.live.write(self)
        self.status.update(state="stopped", epoch=self.epoch + 1, step=self.step)
        return False

    def train_epoch(self, running_since: float, images_done: list[int]) -> bool:
        """The epoch's remaining steps; False (checkpointed at the step) when a stop was asked for."""
        config, seed, epoch = self.config, self.config.seed, self.epoch
        order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(step_seed(seed, epoch)))
        order = order.to(self.device)
        global_batch = config.batch_size * self.world
        self.model.train()
        self.clock.start("train")
        while self.step < self.steps:
            if self.stop_requested():
                return self._stopped()
            step = self.step
            idx = order[step * global_batch : (step + 1) * global_batch][self.rank :: self.world]
            torch.manual_seed(step_seed(seed, epoch, step, self.rank))
            lr = lr_at(epoch * self.steps + step, self.total_steps, self.warmup, config.lr, config.schedule)
            y = self.data.train.labels[idx]
            loss, logits = self._one_step(self.data.train.images[idx], y, lr, step_seed(seed, epoch, step, self.rank, 1))
            if self.ema is not None:
                self.ema.update()
            for sums in (self.acc, self.live.window):
                sums["loss"] += loss.double() * len(y)
                sums["correct"] += (logits.argmax(1) == y).sum()
                sums["seen"] += len(y)
            self.step += 1
            images_done[0] += len(idx) * self.world
            self.status.update(force=False, epoch=epoch + 1, step=self.step, phase="train",
                               images_per_second=images_done[0] / max(1e-9, time.time() - running_since))
            self.live.after_step(self)
            if time.monotonic() - self.last_save >= 60 * config.checkpoint_minutes:
                self.save()
        self.clock.stop("train")
        return True

    def measured_model(self, count: int = PRECISE_BN_IMAGES) -> nn.Module:
        """The model evaluations see: the eval model (EMA or live) with BatchNorm statistics recomputed over training
        images (``effnet.evaluate.precise_bn``; the stored running averages lag the weights on short runs)."""
        return precise_bn(self.eval_model, self.data.train.images, self.config,
                          step_seed(self.config.seed, self.epoch, self.step), count, self.amp)

    def end_epoch(self) -> bool:
        """Evaluate, record the epoch's row, write best.pt/last.pt/metrics; False when a stop came first."""
        self.status.update(phase="evaluating", step=self.steps)
        val_set, amp = self.data.val, self.amp
        measured = self.measured_model()
        val = evaluate(measured, val_set, self.config, amp, self.stop) if len(val_set) else None
        test = evaluate(measured, self.data.test, self.config, amp, self.stop)
        if self.stop_requested() or test is None or (len(val_set) and val is None):
            return self._stopped()
        self.clock.stop("epoch")
        row = self._row(val, test)
        if not math.isfinite(row["train_loss"]):
            raise Diverged(f"training diverged: the loss became {row['train_loss']} in epoch {row['epoch']} (lower "
                           f"the learning rate, {self.config.lr:g}, or the weight decay)")
        self.rows.append(row)
        improved = runs.selected_row(self.rows) is row  # best validation so far (the last epoch without one)
        self.epoch, self.step = self.epoch + 1, 0
        self.acc, self.clock = self._zero_acc(), Stopwatch()
        if self.main:
            self._record(row, test["confusion"], measured if improved else None)
        self.status.update(epoch=min(self.epoch + 1, self.config.epochs), step=0, phase="train")
        return True

    def _row(self, val: dict[str, Any] | None, test: dict[str, Any]) -> dict[str, Any]:
        stats = self.acc
        if self.world > 1:
            stats = {k: v.clone() for k, v in self.acc.items()}
            for v in stats.values():
                dist.all_reduce(v)
        seconds = self.clock.read()
        seen = max(1, int(stats["seen"].item()))
        return {
            "epoch": self.epoch + 1, "train_loss": stats["loss"].item() / seen,
            "train_top1": 100 * stats["correct"].item() / seen,
            "val_top1": val["top1"] if val else None, "val_top5": val["top5"] if val else None,
            "test_top1": test["top1"], "test_top5": test["top5"],
            "val_loss": val["loss"] if val else None, "test_loss": test["loss"],
            "lr": float(self.optimizer.param_groups[0]["lr"]), "epoch_seconds": seconds["epoch"],
            "images_per_second": seen / max(1e-9, seconds["train"]),
        }

    def _record(self, row: dict[str, Any], confusion_matrix: list[list[int]], selected: nn.Module | None) -> None:
        """Rank 0: confusion matrices, best.pt when this epoch is the selected one (``selected``: its measured
        model), last.pt, metrics, one printed line."""
        out = self.out
        confusion = files.read_json(out / runs.CONFUSION) or {}
        confusion["final"] = {"epoch": row["epoch"], "matrix": confusion_matrix}
        confusion["classes"] = self.data.classes
        if selected is not None:
            confusion["best"] = confusion["final"]
            save_checkpoint(out / runs.BEST, {"model": selected.state_dict(), "epoch": row["epoch"],
                                              "val_top1": row["val_top1"], "spec": self.config.spec.to_dict(),
                                              "bn_images": PRECISE_BN_IMAGES})
        self.save()
        files.write_json(out / runs.CONFUSION, confusion)
        runs.write_metrics(out, self.rows)
        val = row["val_top1"] if row["val_top1"] is not None else float("nan")
        self.live.write(self)
        print(f"epoch {row['epoch']}/{self.config.epochs}  loss {row['train_loss']:.4f}  train {row['train_top1']:.2f}%"
              f"  val {val:.2f}%  test {row['test_top1']:.2f}%  {row['images_per_second']:.0f} img/s  "
              f"{row['epoch_seconds']:.0f} s", flush=True)


# ----------------------------------------------------------------------------- training
def _open(config: TrainConfig, out: Path, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The config to train and the checkpoint to continue from; refuses to overwrite a run without ``resume``."""
    if not (out / runs.LAST).is_file():
        return config, None
    if not resume:
        raise ValueError(f"out: {out} already holds a run; pass --resume to continue it or choose another --out")
    checkpoint = load_checkpoint(out / runs.LAST)
    saved = files.read_json(out / runs.CONFIG)
    if saved is not None and isinstance(saved.get("train"), dict):
        # The run continues with its own settings; only where it runs may change.
        config = TrainConfig.from_dict(saved["train"]).replace(device=config.device, data_dir=config.data_dir)
    return config, checkpoint


def distributed_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) of this process: torchrun's variables, else Slurm's (``srun`` starting one task
    per GPU, ``effnet.slurm``'s script exporting MASTER_ADDR and MASTER_PORT), else a single process."""
    env = os.environ
    if "WORLD_SIZE" not in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        env["WORLD_SIZE"], env["RANK"] = env["SLURM_NTASKS"], env["SLURM_PROCID"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    return int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))


def _failure(exc: BaseException) -> dict[str, Any]:
    """The status fields of a failed run; a full disk says so (and that the last checkpoint is kept)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or "the checkpoints folder"
        return {"error": f"disk full: could not write {where}. The last good checkpoint is kept; free some space, "
                         "then resume the run.", "disk_full": True}
    return {"error": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}


def train(config: TrainConfig, out: Path, resume: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) a training run in ``out``; returns the metrics rows. Writes only on rank 0.

    A failure after the run folder is set up is recorded in ``status.json`` (state "failed" and the
    error) before it propagates; a refusal before that (bad settings, an existing run) touches nothing.
    """
    config.validate()
    config, checkpoint = _open(config, out, resume)
    check_disk(config, out)
    queued = (out / runs.JOB).is_file()  # the queue made the folder: a refusal is recorded there
    try:
        # Missing data or a split too small: refused before the run folder exists (a refused command writes nothing).
        dataset = load_dataset(config)
        val_count(config, len(dataset.train))
    except (DataError, ValueError) as exc:
        if queued:
            files.write_status(out / runs.STATUS, {**(files.read_json(out / runs.STATUS) or {}), "state": "failed",
                                                   **_failure(exc)})
        raise
    world, rank, local_rank = distributed_env()
    device = pick_device(config.device, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    status = Status(out, enabled=rank == 0)
    try:
        with contextlib.ExitStack() as held:
            if rank == 0:
                out.mkdir(parents=True, exist_ok=True)
                files.write_json(out / runs.CONFIG, {"spec": config.spec.to_dict(), "train": config.to_dict(),
                                                    "world_size": world, "device": str(device)})
                for path in filter(None, os.environ.get(locks.DEVICE_LOCK_ENV, "").split(os.pathsep)):
                    # Runs started by the queue hold their device's lock while they train (see effnet.jobs).
                    held.enter_context(locks.exclusive(Path(path), on_busy=lambda: status.update(
                        state="waiting", phase="another run holds the device")))
            status.update(state="loading data", device=str(device), world_size=world)
            run = Run(config, out, load_data(config, device, dataset), device, world, rank, status, checkpoint is None)
            return _loop(run, checkpoint)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            status.update(state="failed", **_failure(exc))
        raise
    finally:
        status.close()


def _loop(run: Run, checkpoint: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Epoch after epoch from where the run stands, until the last one or a stop."""
    if checkpoint is not None:
        run.restore(checkpoint)
    if run.main:
        runs.write_metrics(run.out, run.rows)
        run.live.write(run)
    running_since, images_done = time.time(), [0]
    config = run.config
    run.status.update(state="running", epoch=run.epoch + 1, epochs=config.epochs, step=run.step, steps=run.steps,
                      running_since=running_since,
                      start_fraction=(run.epoch + run.step / run.steps) / config.epochs)
    while run.epoch < config.epochs:
        run.clock.start("epoch")
        if not run.train_epoch(running_since, images_done) or not run.end_epoch():
            return run.rows
    run.status.update(state="finished", phase=None)
    return run.rows


def main(argv: list[str] | None = None) -> int:
    config, out, resume = parse_args(argv)
    rank = distributed_env()[1]
    try:
        train(config, out, resume)
    except (DataError, ValueError, CheckpointError) as exc:
        # Expected failures get one clear line; anything else keeps its traceback.
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:  # the disk or the folder: a line saying which, not a traceback
        if rank == 0:
            why = _failure(exc)["error"] if exc.errno == errno.ENOSPC else f"cannot write {exc.filename or out}: " \
                f"{exc.strerror or exc}"
            print(f"error: {why}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
