"""The one prepared device check (issue 19): step throughput per mode, then the real trainer end to end.

    DEVICE=cuda OUT=/tmp/out bash bench/gpu.sh     # on a GPU machine: under 8 minutes on an H100/H200
    DEVICE=cpu DRY_RUN=1 bash bench/gpu.sh         # the same script at toy sizes (the suite runs this)

Writes ``$OUT/gpu.json``:

- ``cases``: B0, B3, B7 (dry run: B0) x modes ``baseline`` (torchvision + DataLoader, bench/train_throughput),
  ``eager`` (effnet.training.step.train_step), ``graphs`` (step.StaticStep captured as a CUDA graph) and ``compile``
  (torch.compile), each with images/s and seconds per 45k-image epoch, or ``skipped`` with the reason;
- ``end_to_end``: ``python -m effnet.train`` on a generated CIFAR-format archive: two epochs with evaluation
  and checkpoints, SIGKILL mid-epoch 2, ``--resume`` to the end (each epoch once in metrics.jsonl), compared
  with an uninterrupted run (bitwise on a CPU; the largest difference is reported on a GPU); one run through
  the queue (effnet.queue.jobs + effnet.queue.campaign) and one CAM on the device.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
import train_throughput as tt  # noqa: E402
from cifar_files import write_cifar_archive  # noqa: E402

from effnet import ScalingSpec, build_model  # noqa: E402
from effnet.training.config import TrainConfig  # noqa: E402
from effnet.training.step import StaticStep, make_optimizer  # noqa: E402

DEVICE = os.environ.get("DEVICE", "cuda")
DRY = os.environ.get("DRY_RUN", "0") == "1"
OUT = Path(os.environ.get("OUT") or ROOT / "bench")
SIZES = ({"variants": ["b0"], "batch": 4, "images": 32, "steps": 1, "rounds": 1} if DRY else
         {"variants": ["b0", "b3", "b7"], "batch": 128, "images": 8192, "steps": 20, "rounds": 3})
BATCH = {"b7": 64}  # B7 at 32 px and batch 128 fits, but 64 keeps the whole check under 8 minutes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(run, steps: int, rounds: int, device: torch.device) -> float:
    """Best seconds of ``rounds`` runs of ``steps`` steps (after untimed warm-up steps)."""
    run(1 if DRY else 5)
    best = float("inf")
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        run(steps)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _case(variant: str, batch: int, mode: str, seconds: float | None, skipped: str | None = None) -> dict:
    case = {"variant": variant.upper(), "batch_size": batch, "mode": mode}
    if skipped is not None:
        return case | {"skipped": skipped}
    img_s = SIZES["steps"] * batch / seconds
    return case | {"img_s": round(img_s, 1), "epoch_s": round(tt.EPOCH_IMAGES / img_s, 2)}


def cases_for(variant: str, device: torch.device) -> list[dict]:
    batch = SIZES["batch"] if DRY else BATCH.get(variant, SIZES["batch"])
    spec = ScalingSpec.official(variant, num_classes=100)
    config = TrainConfig(spec=spec, batch_size=batch, channels_last=True)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (SIZES["images"], 3, 32, 32), dtype=np.uint8)).to(device)
    labels = torch.from_numpy(rng.integers(0, 100, SIZES["images"])).to(device)
    out, steps, rounds = [], SIZES["steps"], SIZES["rounds"]

    base, loader = tt.baseline_setup(spec, images.cpu().numpy(), labels.cpu().numpy(), batch, device)
    base_opt = torch.optim.SGD(base.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    out.append(_case(variant, batch, "baseline",
                     _timed(lambda n: tt.time_baseline(base, loader, base_opt, device, n), steps, rounds, device)))

    def ours(step_model, model):
        opt = make_optimizer(model, config)
        return lambda n: tt.time_ours(step_model, opt, images, labels, spec, config, device, n, batch)

    model = build_model(spec).to(device).to(memory_format=torch.channels_last)
    out.append(_case(variant, batch, "eager", _timed(ours(model, model), steps, rounds, device)))

    if device.type != "cuda":
        out.append(_case(variant, batch, "graphs", None, skipped=f"CUDA graphs need a CUDA device, not {device.type}"))
    else:
        static = StaticStep(model, make_optimizer(model, config), config, images[:batch], labels[:batch],
                            amp=True, capture=True)
        gen = torch.Generator(device=device).manual_seed(0)

        def replay(n: int) -> None:
            for _ in range(n):
                idx = torch.randint(0, len(labels), (batch,), device=device, generator=gen)
                static(images[idx], labels[idx], 0.1, 0)

        seconds = _timed(replay, steps, rounds, device)
        out.append(_case(variant, batch, "graphs", seconds) if static.graph is not None else
                   _case(variant, batch, "graphs", None, skipped=f"capture refused: {static.fallback}"))
    if DRY and device.type == "cpu":
        out.append(_case(variant, batch, "compile", None,
                         skipped="compile is measured on a GPU only (minutes of compilation at toy sizes on a CPU)"))
    else:
        compiled_model = build_model(spec).to(device).to(memory_format=torch.channels_last)
        compiled = torch.compile(compiled_model)
        out.append(_case(variant, batch, "compile", _timed(ours(compiled, compiled_model), steps, rounds, device)))
    return out


def _train(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "effnet.train", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def end_to_end(device: str, work: Path) -> dict:
    """Train, SIGKILL mid-epoch 2, resume; compare with an uninterrupted run; a queued run; a CAM."""
    from effnet.analysis.cam import explain
    from effnet.base import locks
    from effnet.queue import campaign
    from effnet.training import runs
    from effnet.training.checkpoint import load_checkpoint

    data = work / "data"
    write_cifar_archive(data / "cifar-100-python.tar.gz", n_train=160 if DRY else 5000, n_test=50 if DRY else 1000)
    common = ["--data-dir", str(data), "--epochs", "2", "--batch-size", "16" if DRY else "128", "--val-size",
              "32" if DRY else "500", "--device", device, *(["--phi", "-4"] if DRY else ["--variant", "b0"])]
    whole, cut = work / "whole", work / "cut"
    done = _train([*common, "--out", str(whole)])
    log = done.communicate()[0]
    if done.returncode != 0:
        return {"error": f"uninterrupted run failed: {log[-400:]}"}
    proc = _train([*common, "--out", str(cut)])
    killed = False
    while proc.poll() is None:
        s = _status(cut)
        if s.get("epoch") == 2 and (s.get("step") or 0) >= 2:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait()
    resumed = _train([*common, "--out", str(cut), "--resume"])
    resumed_log = resumed.communicate()[0]
    rows = runs.load_metrics(cut)
    a = load_checkpoint(whole / runs.LAST)["model"]
    b = load_checkpoint(cut / runs.LAST)["model"]
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    config = TrainConfig(spec=ScalingSpec(phi=-4, num_classes=100) if DRY else ScalingSpec.official("b0"),
                         epochs=1, batch_size=16 if DRY else 128, subset=64 if DRY else 2000, eval_subset=50,
                         val_size=32, device=device, data_dir=str(data))
    plan = campaign.ensure([config], work / "queue")
    [queued] = campaign.wait(plan.ids, work / "queue")
    deadline = time.monotonic() + 60  # the runner leaves first: nothing may write into the folder as it is removed
    while locks.is_held(work / "queue" / locks.RUNNER_LOCK) and time.monotonic() < deadline:
        time.sleep(0.1)
    model, spec = runs.load_model(cut)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    from PIL import Image

    cam = explain(model.to(device), spec, Image.fromarray(image), road=True)
    return {"epochs": [r["epoch"] for r in rows], "test_top1": rows[-1]["test_top1"] if rows else None,
            "resumed": resumed.returncode == 0 and killed, "killed_mid_epoch": killed,
            "max_weight_difference": diff, "bitwise_equal": diff == 0.0, "queued_run": queued.state,
            "cam_road": cam.road, "graphs_log": [ln for ln in (log + resumed_log).splitlines() if "CUDA graphs" in ln]}


def main() -> None:
    device = torch.device(DEVICE)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": name, "torch": torch.__version__, "dry_run": DRY, "cases": []}
    for variant in SIZES["variants"]:
        report["cases"] += cases_for(variant, device)
        for case in report["cases"][-4:]:
            print(json.dumps(case), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report["end_to_end"] = end_to_end(DEVICE, Path(tmp))
    print(json.dumps(report["end_to_end"]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT / 'gpu.json'}")


if __name__ == "__main__":
    main()
