"""Train a model on CIFAR-100 or your own images: ``python -m effnet.train --variant b0 --epochs 3 ...``.

Read top to bottom: the command line, the learning-rate schedule and seeds, one step, evaluation,
the run's bookkeeping, then ``Run`` (a run in progress, step by step) and ``train``.

Design choices, and why:
- The data lives on the training device as uint8 and is augmented there in batches
  (``effnet.training.step.augment``); preprocessing is the spec's one function (``effnet.arch.preprocess``).
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

import contextlib
import errno
import math
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from effnet.base import files, locks
from effnet.data.cifar import DataError
from effnet.training import runs
from effnet.training.checkpoint import check_disk, load_checkpoint, save_checkpoint
from effnet.training.config import (
    TrainConfig,
    val_count,
)
from effnet.training.evaluate import PRECISE_BN_IMAGES, evaluate, precise_bn
from effnet.training.progress import Diverged, Live, Pace, Status, Stopwatch
from effnet.training.start import (
    Data,
    distributed_env,
    initial_model,
    join_group,
    load_data,
    load_dataset,
    pick_device,
)
from effnet.training.step import EMA, StaticStep, lr_at, make_optimizer, step_seed, train_step

GRAPHS_ENV = "EFFNET_CUDA_GRAPHS"  # "0": no whole-step CUDA graphs


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
        self.pace = Pace()
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
            self.status.update(force=False, epoch=epoch + 1, step=self.step, phase="train", **self.pace.stepped(),
                               images_per_second=images_done[0] / max(1e-9, time.time() - running_since))
            self.live.after_step(self)
            if time.monotonic() - self.last_save >= 60 * config.checkpoint_minutes:
                self.save()
        self.clock.stop("train")
        return True

    def measured_model(self, count: int = PRECISE_BN_IMAGES) -> nn.Module:
        """The model evaluations see: the eval model (EMA or live) with BatchNorm statistics recomputed over training
        images (``effnet.training.evaluate.precise_bn``; the stored running averages lag the weights on short runs)."""
        return precise_bn(self.eval_model, self.data.train.images, self.config,
                          step_seed(self.config.seed, self.epoch, self.step), count, self.amp)

    def end_epoch(self) -> bool:
        """Evaluate, record the epoch's row, write best.pt/last.pt/metrics; False when a stop came first."""
        started = time.time()
        self.status.update(phase="evaluating", step=self.steps, eval_started=started)
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
        self.pace.evaluated()  # the whole end of an epoch, checkpoints and files included, is what the next cost
        last = self.epoch >= self.config.epochs  # the last epoch stays done (step 0 showed a whole epoch left)
        self.status.update(epoch=min(self.epoch + 1, self.config.epochs), step=self.steps if last else 0,
                           phase="train", eval_s=time.time() - started, eval_started=None)
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
        if resume:  # a queued or requeued run before its first checkpoint; said, never silent
            print(f"resume: {out} has no {runs.LAST} yet, so the run starts at epoch 1", flush=True)
        return config, None
    if not resume:
        raise ValueError(f"out: {out} already holds a run; pass --resume to continue it or choose another --out")
    checkpoint = load_checkpoint(out / runs.LAST)
    saved = files.read_json(out / runs.CONFIG)
    if saved is not None and isinstance(saved.get("train"), dict):
        # The run continues with its own settings; only where it runs may change.
        config = TrainConfig.from_dict(saved["train"]).replace(device=config.device, data_dir=config.data_dir)
    return config, checkpoint



def failure(exc: BaseException) -> dict[str, Any]:
    """The status fields of a failed run; a full disk says so (and that the last checkpoint is kept)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or "the checkpoints folder"
        return {"error": f"disk full: could not write {where}. The last good checkpoint is kept; free some space, "
                         "then resume the run.", "disk_full": True}
    return {"error": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}


def train(config: TrainConfig, out: Path, resume: bool = False, checked: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) a training run in ``out``; returns the metrics rows. Writes only on rank 0.

    A failure after the run folder is set up is recorded in ``status.json`` (state "failed" and the
    error) before it propagates; a refusal before that (bad settings, an existing run) touches nothing.
    """
    if not checked:  # the command line validated it already (once per process)
        config.validate()
    config, checkpoint = _open(config, out, resume)
    check_disk(config, out)
    queued = (out / runs.JOB).is_file()  # the queue made the folder: a refusal is recorded there
    try:
        # Missing data or a split too small: refused before the run folder exists (a refused command writes nothing).
        dataset = load_dataset(config)
        n_val = val_count(config, len(dataset.train))  # counted once: load_data splits by it
    except (DataError, ValueError) as exc:
        if queued:
            with runs.status_lock(out):
                files.write_status(out / runs.STATUS, {**(files.read_json(out / runs.STATUS) or {}),
                                                       "state": "failed", **failure(exc)})
        raise
    world, rank, local_rank = distributed_env()
    device = pick_device(config.device, local_rank)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)  # status.json's folder: its lock never creates it
    status = Status(out, enabled=rank == 0)
    try:
        if world > 1 and not dist.is_initialized():
            status.update(state="starting", phase=f"waiting for the run's {world} processes to meet")
            join_group(world, rank, device)  # bounded: a rendezvous that cannot complete fails the run, saying why
        with contextlib.ExitStack() as held:
            if rank == 0:
                out.mkdir(parents=True, exist_ok=True)
                files.write_json(out / runs.CONFIG, {"spec": config.spec.to_dict(), "train": config.to_dict(),
                                                    "world_size": world, "device": str(device)})
                for path in filter(None, os.environ.get(locks.DEVICE_LOCK_ENV, "").split(os.pathsep)):
                    # Runs started by the queue hold their device's lock while they train (see effnet.queue.jobs).
                    held.enter_context(locks.exclusive(Path(path), on_busy=lambda: status.update(
                        state="waiting", phase="another run holds the device")))
            status.update(state="loading data", device=str(device), world_size=world, phase=None)
            run = Run(config, out, load_data(config, device, dataset, n_val), device, world, rank, status, checkpoint is None)
            return _loop(run, checkpoint)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            status.update(state="failed", **failure(exc))
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
    # What one evaluation reads (precise BN's images, validation, test) and one step trains: the ETA's guess at an
    # evaluation's cost until the first is timed.
    eval_images = min(PRECISE_BN_IMAGES, len(run.data.train)) + len(run.data.val) + len(run.data.test)
    run.status.update(state="running", epoch=run.epoch + 1, epochs=config.epochs, step=run.step, steps=run.steps,
                      running_since=running_since, eval_images=eval_images, step_images=config.batch_size * run.world)
    while run.epoch < config.epochs:
        run.clock.start("epoch")
        if not run.train_epoch(running_since, images_done) or not run.end_epoch():
            return run.rows
    run.status.update(state="finished", phase=None)
    return run.rows

