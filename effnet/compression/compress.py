"""Make a finished run small and fast, and measure what it costs: int8 and structured channel pruning.

    python -m effnet.compress checkpoints/<run> --int8 --qat-epochs 1 --prune 0.3,0.5 --finetune-epochs 2 --out OUT

Writes ``OUT/compress.json`` (``{"variants": [{"name", "size_bytes", "params", "latency_ms_b1",
"latency_ms_b32", "test_top1", ...}]}``) and each variant as ``OUT/<name>.onnx``, every number measured
in this one process on the same test images, one thread set for all.

What was chosen, and why (measured on this 2-core AVX2 CPU, bench/RESULTS.md):
- int8 runs in ONNX Runtime. PyTorch's own int8 path (``torch.ao.quantization``) is deprecated and has
  no quantized SiLU; ORT quantizes the exported graph statically (calibrated on training images), with
  per-channel int8 weights and uint8 activations. ``reduce_range`` (7-bit weights) is on: without VNNI
  instructions the uint8 x int8 products saturate, and on a digits run that cost 3.6 points of top-1
  (87.7%) against 1.1 (90.3%) with it. int8 activations (s8s8) kept full accuracy but ran 3x slower
  than fp32.
- Quantization-aware fine-tuning (``--qat-epochs``): the run's weights are trained for a few epochs
  through a per-channel 7-bit fake quantizer (straight-through gradients), so they settle where
  rounding costs least; then the same post-training quantization. Reported beside the plain int8.
- Pruning uses Torch-Pruning, which follows the dependencies a channel has in EfficientNet (depthwise
  convolutions, squeeze-excitation, residual sums) and removes whole channels: the pruned model is a
  smaller dense network, faster without sparse kernels. Channels go by their L2 magnitude, the
  classifier (the model's last linear layer) is kept whole, then a short fine-tune (``--finetune-epochs``) recovers accuracy.
- ``fp32`` is the run as trained, timed in eager PyTorch (what the rest of the lab runs); ``fp32-onnx``
  is the same weights in ONNX Runtime, so the speed int8 adds over ORT alone is visible too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from effnet.arch.preprocess import to_model_input
from effnet.base import files, locks, tasks
from effnet.compression.compressions import COMPRESS, FOLDER, check_run, check_settings
from effnet.training import checkpoint, runs
from effnet.training.checkpoint import load_checkpoint
from effnet.training.config import TrainConfig
from effnet.training.progress import Status

CALIBRATION_IMAGES = 512
WEIGHT_BITS = 7  # reduce_range: what ORT's int8 kernels use on CPUs without VNNI
Predict = Callable[[Tensor], Tensor | np.ndarray]


@dataclass(frozen=True)
class Source:
    """What one compression run works on: the model, its spec and settings, the data, where to write."""

    model: nn.Module
    config: TrainConfig
    data: Any  # effnet.training.start.Data
    out: Path
    x_test: Tensor
    y_test: Tensor


def load_source(run_dir: Path, out: Path, data_dir: str | None = None) -> Source:
    """The run's best checkpoint and its data (the same splits and subsets the run used), on the CPU."""
    from effnet.training.evaluate import precise_bn
    from effnet.training.start import load_data

    check_run(run_dir)
    info = runs.read_run(run_dir)
    model, spec = runs.load_model(run_dir)
    config = info.config.replace(spec=spec, device="cpu", channels_last=False, precision="fp32",
                                 **({"data_dir": data_dir} if data_dir else {}))
    data = load_data(config, torch.device("cpu"))
    if not load_checkpoint(runs.shown_checkpoint(run_dir)).get("bn_images"):
        # A checkpoint from before BatchNorm statistics were measured: they may lag its weights, which costs fp32
        # accuracy and ruins int8 (whose ranges are calibrated through them). Measure them now.
        model = precise_bn(model, data.train.images, config, config.seed)
    return Source(model.eval(), config, data, out, to_model_input(data.test.images, spec), data.test.labels)


# ----------------------------------------------------------------------------- measuring
def top1(predict: Predict, x: Tensor, y: Tensor, batch: int = 256) -> float:
    """Test top-1 (percent) of any predictor of logits."""
    correct = 0
    for i in range(0, len(x), batch):
        logits = torch.as_tensor(predict(x[i:i + batch]))
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / max(1, len(x))


def latency_ms(predict: Predict, x: Tensor, batch: int, budget_s: float = 2.0) -> float:
    """Median milliseconds per call on a batch of ``batch`` images, after warming up (a few calls, then
    as many as fit in ``budget_s``, at least 5)."""
    sample = x[:batch] if len(x) >= batch else x[torch.arange(batch) % len(x)]
    for _ in range(3):
        predict(sample)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        predict(sample)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def eager(model: nn.Module) -> Predict:
    def predict(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return model(x)

    return predict


@dataclass
class Variant:
    """A compressed model ready to measure: how it predicts, its exported file, its parameters."""

    name: str
    predict: Predict
    file: Path
    params: int
    extra: dict[str, Any]


LATENCY_ROUNDS = 2


def measure(variants: list[Variant], source: Source, budget_s: float = 2.0) -> list[dict[str, Any]]:
    """The rows of compress.json: accuracy once, then latency in interleaved rounds (every variant once per
    round, the fastest round kept), so a slow moment of the machine does not land on one variant alone."""
    rows = [{"name": v.name, "size_bytes": v.file.stat().st_size, "params": v.params,
             "test_top1": round(top1(v.predict, source.x_test, source.y_test), 2), "file": v.file.name, **v.extra}
            for v in variants]
    for r in rows:  # what each variant costs in accuracy, against the model as trained (the first row)
        r["vs_fp32"] = round(r["test_top1"] - rows[0]["test_top1"], 2)
    for batch in (1, 32):
        best = [math.inf] * len(variants)
        for _ in range(LATENCY_ROUNDS):
            for i, v in enumerate(variants):
                best[i] = min(best[i], latency_ms(v.predict, source.x_test, batch, budget_s))
        for row, ms in zip(rows, best, strict=True):
            row[f"latency_ms_b{batch}"] = round(ms, 3)
    for r in rows:
        print(f"{r['name']:<14} {r['size_bytes'] / 1e6:7.2f} MB  {r['params']:>10,} params  b1 {r['latency_ms_b1']:7.2f} ms"
              f"  b32 {r['latency_ms_b32']:8.2f} ms  top-1 {r['test_top1']:.2f}%", flush=True)
    return rows


def params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- ONNX and int8
def export_onnx(model: nn.Module, example: Tensor, path: Path) -> Path:
    """The model as ONNX (opset 17, any batch size): what ORT runs and what a user takes away."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return path


def ort_predict(path: Path) -> Predict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # No spinning between calls: idle ORT threads would steal the cores from the next variant's timing.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})[0]


def quantize_int8(fp32_onnx: Path, out: Path, calibration: Tensor) -> Path:
    """Static int8 (ORT): per-channel 7-bit weights, uint8 activations calibrated on ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": calibration[i:i + 64].numpy()} for i in range(0, len(calibration), 64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = out.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32_onnx), str(prepared))
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    return out


class FakeQuant(nn.Module):
    """Per-output-channel symmetric fake quantization of a weight, straight-through gradient."""

    def forward(self, w: Tensor) -> Tensor:
        top = 2 ** (WEIGHT_BITS - 1) - 1
        scale = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8) / top
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -top - 1, top)


def quantization_aware(source: Source, epochs: int) -> nn.Module:
    """A copy of the model fine-tuned with its conv and linear weights seen through ``FakeQuant``."""
    model = copy.deepcopy(source.model)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", FakeQuant())
    finetune(model, source, epochs, lr_scale=0.1)
    for layer in layers:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)  # the 7-bit grid: ORT keeps it
    return measured(model, source)


def measured(model: nn.Module, source: Source) -> nn.Module:
    """``model`` with BatchNorm statistics measured on the run's training images (``evaluate.precise_bn``): after
    pruning or fine-tuning, the stored ones no longer describe the weights, and int8 calibrates through them."""
    from effnet.training.evaluate import precise_bn

    return precise_bn(model, source.data.train.images, source.config, source.config.seed)


# ----------------------------------------------------------------------------- pruning and fine-tuning
def prune(model: nn.Module, ratio: float, example: Tensor) -> nn.Module:
    """A copy with ``ratio`` of the channels of every prunable group removed (dependency-aware, L2 magnitude)."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    head = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1:]  # the classifier (EfficientNet's or a baseline's)
    pruner = tp.pruner.MetaPruner(pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=head, round_to=8)
    pruner.step()
    return pruned


def finetune(model: nn.Module, source: Source, epochs: int, lr_scale: float = 0.2) -> None:
    """A short fine-tune on the run's training images with the run's own recipe (its optimizer, augmentation,
    label smoothing and schedule, from ``effnet.training.step``) at ``lr_scale`` of its learning rate."""
    from effnet.training.step import lr_at, make_optimizer, step_seed, train_step

    if epochs < 1:
        return
    config, train = source.config, source.data.train
    optimizer = make_optimizer(model, config.replace(lr=config.lr * lr_scale))
    steps = max(1, len(train) // config.batch_size)
    total, done = steps * epochs, 0
    warmup = min(int(config.warmup_epochs * steps), total // 10)  # a short warm-up: the weights are trained already
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(step_seed(config.seed, epoch)))
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(done, total, warmup, config.lr * lr_scale, config.schedule)
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            generator = torch.Generator().manual_seed(step_seed(config.seed, epoch, step))
            train_step(model, optimizer, train.images[idx], train.labels[idx], config, generator, amp=False)
            done += 1
    model.eval()


# ----------------------------------------------------------------------------- the whole compression
_REPORTERS: dict[Path, Status] = {}


def write_status(out: Path, **fields: Any) -> None:
    """Progress for the Compress page (which step, how many of how many), through the trainer's ``Status``: its
    heartbeat keeps the compression alive between steps, as ``effnet.base.tasks`` reads it."""
    reporter = _REPORTERS.get(out)
    if reporter is None:
        reporter = _REPORTERS[out] = Status(out, enabled=True)
    reporter.update(**({"doing": None, "error": None} | fields))
    if fields.get("state") in tasks.ENDED:
        reporter.close()
        _REPORTERS.pop(out, None)


def compress(source: Source, int8: bool, qat_epochs: int, ratios: list[float], finetune_epochs: int,
             budget_s: float = 2.0) -> list[dict]:
    """Every asked-for variant, exported and measured; fp32 (eager and ORT) always first."""
    out, example = source.out, source.x_test[:1]
    steps = 1 + int8 + (int8 and qat_epochs > 0) + len(ratios)
    made: list[Variant] = []

    def step(name: str) -> None:
        write_status(out, state="running", step=len(made), steps=steps, doing=name)

    step("fp32")
    fp32 = export_onnx(source.model, example, out / "fp32.onnx")
    made.append(Variant("fp32", eager(source.model), fp32, params_of(source.model), {"runtime": "PyTorch eager"}))
    made.append(Variant("fp32-onnx", ort_predict(fp32), fp32, params_of(source.model), {"runtime": "ONNX Runtime"}))
    calibration = to_model_input(source.data.train.images[:CALIBRATION_IMAGES], source.config.spec)
    if int8:
        step("int8")
        path = quantize_int8(fp32, out / "int8.onnx", calibration)
        made.append(Variant("int8", ort_predict(path), path, params_of(source.model),
                            {"runtime": "ONNX Runtime", "method": "post-training"}))
    if int8 and qat_epochs > 0:
        step("int8-qat")
        qat = quantization_aware(source, qat_epochs)
        path = quantize_int8(export_onnx(qat, example, out / "qat-fp32.onnx"), out / "int8-qat.onnx", calibration)
        (out / "qat-fp32.onnx").unlink()
        made.append(Variant("int8-qat", ort_predict(path), path, params_of(qat),
                            {"runtime": "ONNX Runtime", "method": f"weight quantization-aware fine-tune, {qat_epochs} ep"}))
    for ratio in ratios:
        name = f"pruned-{ratio:g}"
        step(name)
        pruned = prune(source.model, ratio, example)
        finetune(pruned, source, finetune_epochs)
        pruned = measured(pruned, source)
        made.append(Variant(name, eager(pruned), export_onnx(pruned, example, out / f"{name}.onnx"), params_of(pruned),
                            {"runtime": "PyTorch eager", "finetune_epochs": finetune_epochs}))
    write_status(out, state="running", step=steps, steps=steps, doing="measuring")
    return measure(made, source, budget_s)


def run(run_dir: Path, out: Path, int8: bool = True, qat_epochs: int = 0, ratios: list[float] | None = None,
        finetune_epochs: int = 1, data_dir: str | None = None, budget_s: float = 2.0) -> dict[str, Any]:
    """Compress ``run_dir`` into ``out`` (compress.json, one ONNX file per variant, status.json). With neither
    int8 nor pruning asked for, only the fp32 rows (eager and ONNX Runtime) are measured."""
    ratios = ratios or []
    check_settings(qat_epochs, ratios, finetune_epochs, budget_s)
    check_run(run_dir)  # refused before anything is written
    out.mkdir(parents=out.parent.name != FOLDER, exist_ok=True)  # the app's: inside a run that must still exist
    write_status(out, state="starting", step=0, steps=1)
    try:
        with contextlib.ExitStack() as held:
            for path in filter(None, os.environ.get(locks.DEVICE_LOCK_ENV, "").split(os.pathsep)):
                # Started by the app: wait for training on these cores to end, and keep them while timing.
                held.enter_context(locks.exclusive(Path(path), on_busy=lambda: write_status(
                    out, state="waiting", step=0, steps=1, doing="a training run is using the CPU")))
            result = _run(run_dir, out, int8, qat_epochs, ratios, finetune_epochs, data_dir, budget_s)
    except BaseException as exc:
        write_status(out, state="failed", error=f"{exc.__class__.__name__}: {exc}")
        raise
    files.write_json(out / COMPRESS, result)
    write_status(out, state="finished", step=1, steps=1)
    return result


def _run(run_dir: Path, out: Path, int8: bool, qat_epochs: int, ratios: list[float], finetune_epochs: int,
         data_dir: str | None, budget_s: float) -> dict[str, Any]:
    write_status(out, state="loading data", step=0, steps=1)
    source = load_source(run_dir, out, data_dir)
    return {"run": str(run_dir), "spec": source.config.spec.name, "test_images": len(source.y_test),
            "threads": torch.get_num_threads(),
            "variants": compress(source, int8, qat_epochs, ratios, finetune_epochs, budget_s)}


# ----------------------------------------------------------------------------- in the background (the app)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet.compress", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished run's folder")
    p.add_argument("--int8", action="store_true", help="int8 (ONNX Runtime, calibrated on training images)")
    p.add_argument("--qat-epochs", type=int, default=0, help="also quantization-aware fine-tuning, N epochs")
    p.add_argument("--prune", default="", help="channel ratios to prune, e.g. 0.3,0.5")
    p.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning after pruning")
    p.add_argument("--data-dir", help="where the run's data is here (default: the run's own setting)")
    p.add_argument("--threads", type=int, help="CPU threads for every measurement (default: PyTorch's)")
    p.add_argument("--time-budget", type=float, default=2.0, help="seconds of timing per variant, batch and round")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"threads: must be 1 or more, got {args.threads}")
    if not args.out.strip():
        p.error("out: give the folder to write the compressed models to")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ratios = [float(r) for r in args.prune.split(",") if r.strip()]
        result = run(Path(args.run), Path(args.out), args.int8, args.qat_epochs, ratios, args.finetune_epochs,
                     args.data_dir, args.time_budget)
    except (ValueError, checkpoint.CheckpointError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result["variants"], indent=1))
    return 0

