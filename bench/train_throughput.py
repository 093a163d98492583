"""Training throughput: our training step against the one a user would otherwise write.

Baseline: torchvision's ``efficientnet_b0`` (100 classes) with the same strides patched in as
our geometry (cifar: stem and first stride-2 stage at stride 1), fp32, default memory format,
a standard ``DataLoader`` over the same images with RandomCrop(32, padding=4), RandomHorizontalFlip,
ToTensor and Normalize (PIL per image, as ``torchvision.datasets.CIFAR100`` yields them);
``num_workers=0`` on the CPU (workers would take the two compute cores), 8 on a GPU.

Ours: ``effnet.training.step.train_step`` as the trainer runs it: data on the device as uint8, batched
augmentation and preprocessing there, channels_last, bf16 autocast on CUDA, optional torch.compile.

Same batch size, geometry and device; one process; the two alternate, several rounds, best of each.

    python bench/train_throughput.py --device cpu --json OUT.json
    python bench/train_throughput.py --device cuda --variant b3 --batch-size 256
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from effnet import ScalingSpec, build_model, model_card
from effnet.arch.preprocess import STATS
from effnet.training.config import TrainConfig
from effnet.training.step import make_optimizer, train_step

EPOCH_IMAGES = 45_000  # CIFAR-100 training split after holding out 5,000 for validation


class PilCifar(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR100 does per item: numpy HWC -> PIL -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: transforms.Compose) -> None:
        self.images, self.labels, self.transform = images.transpose(0, 2, 3, 1), labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline_model(spec: ScalingSpec) -> torch.nn.Module:
    """torchvision's model for the variant, strides patched to the spec's geometry."""
    model = getattr(torchvision.models, f"efficientnet_{spec.variant}")(num_classes=spec.num_classes)
    model.features[0][0].stride = (spec.stem_stride, spec.stem_stride)
    for stage, shape in zip(list(model.features)[1:8], spec.stages, strict=True):
        depthwise = stage[0].block[0 if shape.expand == 1 else 1][0]
        depthwise.stride = (shape.stride, shape.stride)
    return model


def baseline_setup(spec: ScalingSpec, images_np: np.ndarray, labels_np: np.ndarray, batch: int,
                   device: torch.device, workers: int | None = None) -> tuple[torch.nn.Module, object]:
    """The baseline as a user would write it: torchvision's model and a DataLoader with PIL transforms."""
    mean, std = STATS[spec.normalization]
    pipeline = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    if spec.resolution != 32:
        pipeline.append(transforms.Resize(spec.resolution))
    pipeline += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    workers = workers if workers is not None else (8 if device.type == "cuda" else 0)
    loader = torch.utils.data.DataLoader(PilCifar(images_np, labels_np, transforms.Compose(pipeline)),
                                         batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    return baseline_model(spec).to(device), iter(itertools.chain.from_iterable(itertools.repeat(loader)))


def time_baseline(model, loader_iter, optimizer, device, steps: int) -> float:
    model.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(loader_iter)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync()
    return time.perf_counter() - start


def time_ours(model, optimizer, images, labels, spec, config, device, steps: int, batch: int) -> float:
    model.train()
    amp = device.type == "cuda"
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = len(labels)
    start = time.perf_counter()
    for _step in range(steps):
        idx = torch.randint(0, n, (batch,), device=device, generator=gen)
        train_step(model, optimizer, images[idx], labels[idx], config, gen, amp)
    sync()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", default="b0")
    p.add_argument("--geometry", default="cifar", choices=("cifar", "imagenet"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=2048, help="synthetic CIFAR-format images")
    p.add_argument("--workers", type=int, help="baseline DataLoader workers (default 0 on CPU, 8 on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model too")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as our trainer does; it speeds up the baseline too
    spec = ScalingSpec.official(args.variant, geometry=args.geometry, num_classes=100)
    rng = np.random.default_rng(0)
    images_np = rng.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8)
    labels_np = rng.integers(0, 100, args.images)

    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
    base, loader_iter = baseline_setup(spec, images_np, labels_np, args.batch_size, device, workers)
    base_opt = torch.optim.SGD(base.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    config = TrainConfig(spec=spec, batch_size=args.batch_size, channels_last=args.channels_last,
                         compile=args.compile)
    ours = build_model(spec).to(device)
    if config.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    our_opt = make_optimizer(ours, config)
    step_model = torch.compile(ours) if args.compile else ours
    images = torch.from_numpy(images_np).to(device)
    labels = torch.from_numpy(labels_np).to(device)

    # Warm up both (allocator, cuDNN autotuning, compilation), then alternate timed rounds.
    time_baseline(base, loader_iter, base_opt, device, 2)
    time_ours(step_model, our_opt, images, labels, spec, config, device, 2, args.batch_size)
    best_base = best_ours = float("inf")
    for r in range(args.rounds):
        tb = time_baseline(base, loader_iter, base_opt, device, args.steps)
        to = time_ours(step_model, our_opt, images, labels, spec, config, device, args.steps, args.batch_size)
        best_base, best_ours = min(best_base, tb), min(best_ours, to)
        print(f"round {r + 1}: baseline {args.steps * args.batch_size / tb:8.1f} img/s   "
              f"ours {args.steps * args.batch_size / to:8.1f} img/s", flush=True)

    base_ips = args.steps * args.batch_size / best_base
    our_ips = args.steps * args.batch_size / best_ours
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    result = {
        "device": name, "torch": torch.__version__, "variant": spec.name, "geometry": spec.geometry,
        "resolution": spec.resolution, "batch_size": args.batch_size, "params": model_card(spec).params,
        "baseline_workers": workers, "channels_last": config.channels_last, "compile": args.compile,
        "baseline_img_s": base_ips, "ours_img_s": our_ips,
        "baseline_epoch_s": EPOCH_IMAGES / base_ips, "ours_epoch_s": EPOCH_IMAGES / our_ips,
        "ratio": our_ips / base_ips,
    }
    print(f"{name}: {spec.name} {spec.geometry} {spec.resolution}px batch {args.batch_size}")
    print(f"baseline {base_ips:.1f} img/s ({result['baseline_epoch_s']:.0f} s per 45k-image epoch)")
    print(f"ours     {our_ips:.1f} img/s ({result['ours_epoch_s']:.0f} s per 45k-image epoch)")
    print(f"ratio    {result['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
