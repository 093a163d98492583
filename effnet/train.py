"""Train an EfficientNet on CIFAR-100: ``python -m effnet.train --variant b0 --epochs 3 ...``.

Read top to bottom: configuration, the learning-rate schedule, evaluation, then ``train``.

Design choices, and why:
- The data lives on the training device as uint8 and is augmented there in batches
  (``effnet.data.augment``); preprocessing is the spec's one function (``effnet.preprocess``).
- Every random choice is a function of (seed, epoch, step): the epoch's shuffle comes from a
  generator seeded by (seed, epoch) and each step reseeds torch before augmenting and running
  the model (dropout, stochastic depth). A resumed run therefore replays exactly what an
  uninterrupted one would have done, and on the CPU ends with bitwise identical weights.
- Checkpoints hold the exact position within the epoch (step, running sums) and are written
  atomically at every epoch end, every ``--checkpoint-minutes`` within an epoch, and on SIGTERM.
- ``metrics.jsonl`` is rewritten from the rows stored in the checkpoint, so an epoch appears
  exactly once however often the run was killed and resumed.
- Under ``torchrun`` the same command trains with DDP (gloo on CPU, NCCL on GPU); rank 0 writes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from effnet import runs
from effnet.cli import add_spec_arguments, spec_from_args
from effnet.data import AUGMENTATIONS, DataError, Split, augment, load_cifar100, split_train_val
from effnet.model import EfficientNet, build_model, load_pretrained
from effnet.preprocess import to_model_input
from effnet.scaling import ScalingSpec

SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class TrainConfig:
    """Everything that decides a run besides the spec. Stored in ``config.json``."""

    spec: dict[str, Any] = field(default_factory=lambda: ScalingSpec.official("b0").to_dict())
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
    compile: bool = False
    channels_last: bool = True
    pretrained: bool = False
    data_dir: str | None = None
    checkpoint_minutes: float = 10.0
    eval_batch_size: int = 256

    @property
    def model_spec(self) -> ScalingSpec:
        return ScalingSpec.from_dict(self.spec)

    def validate(self) -> None:
        """``ValueError`` naming the setting, before anything is loaded or started."""
        spec = self.model_spec
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
            (self.subset is None or self.subset >= 1, "subset", "must be at least 1"),
            (self.eval_subset is None or self.eval_subset >= 1, "eval_subset", "must be at least 1"),
            (self.val_size >= 0, "val_size", "must be 0 or more"),
            (self.checkpoint_minutes >= 0, "checkpoint_minutes", "must be 0 or more"),
            (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "device", "must be auto, cpu or cuda[:N]"),
            (not self.pretrained or spec.is_official, "pretrained", "needs an official variant (b0-b7)"),
            (not self.pretrained or spec.normalization == "imagenet", "pretrained",
             "needs the spec's normalization='imagenet' (the statistics the weights were trained with)"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise ValueError(f"{name}: {message}, got {getattr(self, name)!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device: CUDA was asked for but no GPU is available here (use --device cpu or auto)")


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path, bool]:
    p = argparse.ArgumentParser(prog="python -m effnet.train", description=__doc__.split("\n\n")[0])
    add_spec_arguments(p, num_classes_default=None)
    d = TrainConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process under torchrun")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false", help="plain momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="not applied to BN and biases")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    p.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the weights, e.g. 0.999 (0: off)")
    p.add_argument("--augment", choices=AUGMENTATIONS, default=d.augment)
    p.add_argument("--subset", type=int, help="train on the first N training images")
    p.add_argument("--eval-subset", type=int, help="evaluate on the first N validation and test images")
    p.add_argument("--val-size", type=int, default=d.val_size, help="images held out from training for validation")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; slow to start on CPU)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--pretrained", action="store_true", help="start from torchvision's ImageNet weights")
    p.add_argument("--data-dir", help="folder with cifar-100-python (default: $EFFNET_DATA or ./data)")
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes,
                   help="also checkpoint within an epoch this often (0: every step)")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--out", required=True, help="run folder, e.g. checkpoints/my-run")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    args = p.parse_args(argv)
    try:
        extra = {"normalization": "imagenet"} if args.pretrained else {}
        spec = spec_from_args(args, num_classes=args.num_classes or 100, **extra)
        config = TrainConfig(
            spec=spec.to_dict(), **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                                    if f.name != "spec"})
        config.validate()
    except ValueError as exc:
        p.error(str(exc))
    return config, Path(args.out), args.resume


def config_to_argv(config: TrainConfig, out: Path, resume: bool = False) -> list[str]:
    """The command line that ``parse_args`` turns back into ``config`` (used by the job queue)."""
    spec = config.model_spec
    argv = ["--variant", spec.variant] if spec.variant else [
        "--phi", repr(spec.phi), "--alpha", repr(spec.alpha), "--beta", repr(spec.beta), "--gamma", repr(spec.gamma)]
    argv += ["--geometry", spec.geometry, "--num-classes", str(spec.num_classes), "--scaling", spec.scaling]
    for name in ("base_resolution", "output_stride", "dropout"):
        if getattr(spec, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(spec, name))]
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        if f.name == "spec" or value is None or value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append({"nesterov": "--no-nesterov", "channels_last": "--no-channels-last"}.get(f.name, flag))
        else:
            argv += [flag, str(value)]
    return [*argv, "--out", str(out), *(["--resume"] if resume else [])]


# ----------------------------------------------------------------------------- schedule, seeds
def lr_at(step: int, total: int, warmup: int, base_lr: float, schedule: str) -> float:
    """Learning rate at global step ``step`` (0-based): linear warmup, then the schedule's decay."""
    if schedule == "onecycle":
        warmup = max(1, int(0.3 * total))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    t = (step - warmup) / max(1, total - warmup)
    floor = base_lr * (1e-4 if schedule == "onecycle" else 0.0)
    return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


def step_seed(*parts: int) -> int:
    """A 63-bit seed from (seed, epoch, step, rank): every step's randomness is reproducible."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum; weight decay on conv and linear weights, not on BatchNorm and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    other = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)


class EMA:
    """Exponential moving average of the weights (buffers are copied), evaluated instead of the raw model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # Pair the tensors once: updates then touch them in place every step, no dict building.
        self.params = (list(self.model.parameters()), list(model.parameters()))
        self.buffers = list(zip(self.model.buffers(), model.buffers(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.params[0], self.params[1], 1 - self.decay)
        for mine, live in self.buffers:
            mine.copy_(live)  # BatchNorm statistics follow the live model


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
               spec: ScalingSpec, config: TrainConfig, generator: torch.Generator, amp: bool) -> tuple[Tensor, Tensor]:
    """One SGD step on uint8 images: augment and preprocess on their device, forward, backward, update.

    Returns (loss, logits), detached, still on the device (no host sync here).
    """
    x = to_model_input(augment(images, generator, config.augment), spec)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, split: Split, spec: ScalingSpec, batch_size: int, amp: bool,
             stop: threading.Event | None = None) -> dict[str, Any] | None:
    """top-1/top-5 (percent), loss and the confusion matrix; None if ``stop`` was set midway."""
    was_training = model.training
    model.eval()
    k = min(5, spec.num_classes)
    n_classes = spec.num_classes
    confusion = torch.zeros(n_classes * n_classes, dtype=torch.long, device=split.labels.device)
    top1 = top5 = 0
    loss = 0.0
    for i in range(0, len(split), batch_size):
        if stop is not None and stop.is_set():
            model.train(was_training)
            return None
        x = to_model_input(split.images[i : i + batch_size], spec)
        y = split.labels[i : i + batch_size]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == y).sum().item()
        top5 += (best == y[:, None]).any(dim=1).sum().item()
        confusion += torch.bincount(y * n_classes + best[:, 0], minlength=n_classes * n_classes)
    model.train(was_training)
    n = max(1, len(split))
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss / n,
            "confusion": confusion.view(n_classes, n_classes).tolist()}


# ----------------------------------------------------------------------------- run bookkeeping
class Status:
    """``status.json`` of a run: updated by the loop, refreshed by a heartbeat thread every few seconds."""

    HEARTBEAT_SECONDS = 5.0

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / runs.STATUS
        self.enabled = enabled
        self.lock = threading.Lock()
        self.fields: dict[str, Any] = {"state": "starting", "pid": os.getpid(), "started": time.time()}
        self.last_write = 0.0
        self._stop = threading.Event()
        if enabled:
            threading.Thread(target=self._beat, daemon=True).start()

    def update(self, force: bool = True, **fields: Any) -> None:
        with self.lock:
            self.fields.update(fields)
            if fields.get("state") in ("finished", "stopped", "failed"):
                self.fields["ended"] = time.time()
            if self.enabled and (force or time.time() - self.last_write > 1.0):
                self._write()

    def _write(self) -> None:
        self.fields["heartbeat"] = self.last_write = time.time()
        runs.write_json(self.path, self.fields)

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_SECONDS):
            with self.lock:
                self._write()

    def close(self) -> None:
        """Stop the heartbeat: after this, status.json changes only when the process says so."""
        self._stop.set()
        with self.lock:
            pass


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


# ----------------------------------------------------------------------------- training
def train(config: TrainConfig, out: Path, resume: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) a training run in ``out``; returns the metrics rows. Writes only on rank 0.

    A failure after the run folder is set up is recorded in ``status.json`` (state "failed" and the
    error) before it propagates; a refusal before that (bad settings, an existing run) touches nothing.
    """
    config.validate()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    checkpoint: dict[str, Any] | None = None
    if resume and (out / runs.LAST).is_file():
        checkpoint = runs.load_checkpoint(out / runs.LAST)
        saved = runs.read_json(out / runs.CONFIG)
        if saved is not None:
            config = TrainConfig(**{**saved["train"], "device": config.device, "data_dir": config.data_dir})
    elif (out / runs.LAST).is_file():
        raise ValueError(f"out: {out} already holds a run; pass --resume to continue it or choose another --out")
    device = pick_device(config.device, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    status = Status(out, enabled=rank == 0)
    try:
        return _train(config, out, checkpoint, device, world, rank, status)
    except BaseException as exc:
        status.update(state="failed", error=f"{exc.__class__.__name__}: {exc}",
                      traceback=traceback.format_exc()[-4000:])
        raise
    finally:
        status.close()


DEVICE_LOCK_ENV = "EFFNET_DEVICE_LOCK"


def _wait_for_device(status: Status) -> object | None:
    """Runs started by the job queue hold an exclusive flock on the queue's device lock while they train.

    The queue's runner starts one run at a time; this lock also covers the case where a runner died
    and a new one started while the orphaned run still trains: the next run waits instead of sharing
    the GPU. Returns the open lock file (the lock lasts as long as it stays open).
    """
    path = os.environ.get(DEVICE_LOCK_ENV)
    if not path:
        return None
    import fcntl

    lock = open(path, "a")  # noqa: SIM115 (held open for the life of the process)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        status.update(state="waiting", phase="another run holds the device")
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _train(config: TrainConfig, out: Path, checkpoint: dict[str, Any] | None, device: torch.device,
           world: int, rank: int, status: Status) -> list[dict[str, Any]]:
    main = rank == 0
    spec = config.model_spec
    # SIGTERM (the app's Stop, or torchrun passing one on) asks for a checkpoint at the next step.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if main:
        out.mkdir(parents=True, exist_ok=True)
        runs.write_json(out / runs.CONFIG, {"spec": spec.to_dict(), "train": dataclasses.asdict(config),
                                            "world_size": world, "device": str(device)})
    device_lock = _wait_for_device(status) if main else None  # noqa: F841 (held until the process ends)
    status.update(state="loading data", device=str(device), world_size=world)

    # ---- data: held-out validation split, optional subsets, everything on the device as uint8
    data = load_cifar100(config.data_dir)
    if spec.num_classes < 100:
        raise ValueError(f"num_classes: CIFAR-100 labels go up to 99, so {spec.num_classes} classes cannot fit")
    train_idx, val_idx = split_train_val(len(data.train), config.val_size)
    if config.subset is not None:
        train_idx = train_idx[: config.subset]
    n_eval = config.eval_subset
    train_set = data.train.take(train_idx).to(device)
    val_set = data.train.take(val_idx[:n_eval]).to(device)
    test_set = data.test.take(torch.arange(len(data.test))[:n_eval]).to(device)

    # ---- model, optimizer, EMA
    torch.manual_seed(config.seed)
    # ImageNet weights only for a fresh run: a resumed one takes every weight from its checkpoint (offline too).
    model: EfficientNet = load_pretrained(spec) if config.pretrained and checkpoint is None else build_model(spec)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    ema = EMA(model, config.ema) if config.ema > 0 else None
    step_model: nn.Module = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        step_model = torch.compile(step_model)
    amp = device.type == "cuda"
    if amp:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels

    global_batch = config.batch_size * world
    steps = max(1, len(train_set) // global_batch)
    total_steps = steps * config.epochs
    warmup = min(int(config.warmup_epochs * steps), total_steps // 2)

    # ---- where to start: a fresh run, or the exact step of the last checkpoint
    start_epoch, start_step, best_val = 0, 0, -1.0
    rows: list[dict[str, Any]] = []
    acc = {"loss": torch.zeros((), dtype=torch.float64, device=device),
           "correct": torch.zeros((), dtype=torch.long, device=device),
           "seen": torch.zeros((), dtype=torch.long, device=device)}
    seconds = {"train": 0.0, "epoch": 0.0}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if ema is not None and "ema" in checkpoint:
            ema.model.load_state_dict(checkpoint["ema"])
        start_epoch, start_step, best_val = checkpoint["epoch"], checkpoint["step"], checkpoint["best_val"]
        rows = list(checkpoint["rows"])
        acc = {k: v.to(device) for k, v in checkpoint["acc"].items()}
        seconds = dict(checkpoint["seconds"])
    if main:
        runs.write_metrics(out, rows)

    def save(epoch: int, step: int) -> None:
        if not main:
            return
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                 "best_val": best_val, "rows": rows, "acc": {k: v.cpu() for k, v in acc.items()},
                 "seconds": seconds, "spec": spec.to_dict(), "config": dataclasses.asdict(config)}
        if ema is not None:
            state["ema"] = ema.model.state_dict()
        runs.save_checkpoint(out / runs.LAST, state)

    def stop_requested() -> bool:
        if world == 1:
            return stop.is_set()
        # All ranks must agree, or one would wait forever in the next collective.
        flag = torch.tensor(float(stop.is_set()), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # For the live view: where this process started and how fast it goes (host-side counts, no GPU sync).
    running_since, images_done = time.time(), 0
    status.update(state="running", epoch=start_epoch + 1, epochs=config.epochs, step=start_step, steps=steps,
                  running_since=running_since, start_fraction=(start_epoch + start_step / steps) / config.epochs)
    last_save = time.monotonic()
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.monotonic()
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(step_seed(config.seed, epoch)))
        order = order.to(device)
        model.train()
        train_start = time.monotonic()
        for step in range(start_step, steps):
            if stop_requested():
                seconds["train"] += time.monotonic() - train_start
                seconds["epoch"] += time.monotonic() - epoch_start
                save(epoch, step)
                status.update(state="stopped", epoch=epoch + 1, step=step)
                return rows
            idx = order[step * global_batch : (step + 1) * global_batch][rank::world]
            torch.manual_seed(step_seed(config.seed, epoch, step, rank))
            gen = torch.Generator(device=device).manual_seed(step_seed(config.seed, epoch, step, rank, 1))
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps + step, total_steps, warmup, config.lr, config.schedule)
            y = train_set.labels[idx]
            loss, logits = train_step(step_model, optimizer, train_set.images[idx], y, spec, config, gen, amp)
            if ema is not None:
                ema.update()
            acc["loss"] += loss.double() * len(y)
            acc["correct"] += (logits.argmax(1) == y).sum()
            acc["seen"] += len(y)
            images_done += len(idx) * world
            status.update(force=False, epoch=epoch + 1, step=step + 1, phase="train",
                          images_per_second=images_done / max(1e-9, time.time() - running_since))
            if time.monotonic() - last_save >= 60 * config.checkpoint_minutes:
                seconds["train"] += time.monotonic() - train_start
                seconds["epoch"] += time.monotonic() - epoch_start
                train_start = epoch_start = time.monotonic()
                save(epoch, step + 1)
                last_save = time.monotonic()
        seconds["train"] += time.monotonic() - train_start
        start_step = 0

        # ---- end of epoch: evaluate, record, checkpoint (a stop here resumes at the evaluation)
        status.update(phase="evaluating", step=steps)
        eval_model = ema.model if ema is not None else model
        val = evaluate(eval_model, val_set, spec, config.eval_batch_size, amp, stop) if len(val_set) else None
        test = evaluate(eval_model, test_set, spec, config.eval_batch_size, amp, stop)
        if stop_requested() or test is None or (len(val_set) and val is None):
            seconds["epoch"] += time.monotonic() - epoch_start
            save(epoch, steps)
            status.update(state="stopped")
            return rows
        stats = acc
        if world > 1:
            stats = {k: v.clone() for k, v in acc.items()}
            for v in stats.values():
                dist.all_reduce(v)
        seconds["epoch"] += time.monotonic() - epoch_start
        seen = max(1, int(stats["seen"].item()))
        row = {
            "epoch": epoch + 1,
            "train_loss": stats["loss"].item() / seen,
            "train_top1": 100 * stats["correct"].item() / seen,
            "val_top1": val["top1"] if val else None,
            "val_top5": val["top5"] if val else None,
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "val_loss": val["loss"] if val else None,
            "test_loss": test["loss"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds["epoch"],
            "images_per_second": seen / max(1e-9, seconds["train"]),
        }
        rows.append(row)
        score = row["val_top1"] if row["val_top1"] is not None else row["test_top1"]
        improved = score > best_val
        if improved:
            best_val = score
        acc = {k: torch.zeros_like(v) for k, v in acc.items()}
        seconds = {"train": 0.0, "epoch": 0.0}
        if main:
            confusion = runs.read_json(out / runs.CONFUSION) or {}
            confusion["final"] = {"epoch": epoch + 1, "matrix": test["confusion"]}
            confusion["classes"] = {"fine": data.fine_names, "coarse": data.coarse_names,
                                    "fine_to_coarse": data.fine_to_coarse}
            if improved:
                confusion["best"] = confusion["final"]
                best_state = (ema.model if ema is not None else model).state_dict()
                runs.save_checkpoint(out / runs.BEST, {"model": best_state, "epoch": epoch + 1,
                                                       "val_top1": row["val_top1"], "spec": spec.to_dict()})
            save(epoch + 1, 0)
            last_save = time.monotonic()
            runs.write_json(out / runs.CONFUSION, confusion)
            runs.write_metrics(out, rows)
            print(f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']:.4f}  train {row['train_top1']:.2f}%  "
                  f"val {row['val_top1'] if val else float('nan'):.2f}%  test {row['test_top1']:.2f}%  "
                  f"{row['images_per_second']:.0f} img/s  {row['epoch_seconds']:.0f} s", flush=True)
        status.update(epoch=min(epoch + 2, config.epochs), step=0, phase="train")
    status.update(state="finished", phase=None)
    return rows


def main(argv: list[str] | None = None) -> int:
    config, out, resume = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        train(config, out, resume)
    except (DataError, ValueError, runs.CheckpointError) as exc:
        # Expected failures get one clear line; anything else keeps its traceback.
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
