"""What a run starts from: its device, its data split, its first weights."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.constants import default_pg_timeout

from effnet.arch.model import build_model, head_prefix, load_pretrained
from effnet.arch.specs import Spec
from effnet.data.cifar import Cifar100, DataError, Split, data_dir, load_cifar100, split_train_val
from effnet.training import runs
from effnet.training.config import (
    TrainConfig,
    val_count,
)


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
    from effnet.data.folder import load_folder

    data, skipped = load_folder(data_dir(config.data_dir), config.spec.resolution, config.seed)
    if skipped:
        print(f"{skipped} file(s) in {data_dir(config.data_dir)} are not readable images: skipped", flush=True)
    if len(data.fine_names) != config.spec.num_classes:
        raise DataError(f"{data_dir(config.data_dir)} has {len(data.fine_names)} classes but the model has "
                        f"{config.spec.num_classes} outputs (leave --num-classes out to take the folder's count)")
    return data


def load_data(config: TrainConfig, device: torch.device, data: Cifar100 | None = None,
              n_val: int | None = None) -> Data:
    """Held-out validation split, optional subsets, everything on the device as uint8 (``data``: the dataset
    when it is already loaded; ``n_val``: its validation count when already counted)."""
    data = data if data is not None else load_dataset(config)
    n_val = val_count(config, len(data.train)) if n_val is None else n_val
    train_idx, val_idx = split_train_val(len(data.train), n_val)
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



class RendezvousError(RuntimeError):
    """The processes of a distributed run did not all meet in time (the message says where, and why it may be)."""


RENDEZVOUS_ENV = "EFFNET_RENDEZVOUS_S"
RENDEZVOUS_S = 180  # a node that is up reaches rank 0 in seconds; one that never will must not hang the run


def join_group(world: int, rank: int, device: torch.device) -> None:
    """Meet the run's other processes at MASTER_ADDR:MASTER_PORT within ``$EFFNET_RENDEZVOUS_S`` seconds, else a
    ``RendezvousError`` saying who did not come (torch's own default would wait 30 minutes, retrying for ever on a name
    that does not resolve). Then the process group, NCCL on GPUs, gloo on CPUs: the same code path. Under torchrun,
    torchrun's own rendezvous (with its own timeouts) has met them already."""
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    limit = _seconds(os.environ.get(RENDEZVOUS_ENV))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        # Under torchrun its agent has met the processes already and serves the store: torch's own env:// path.
        # (A TCPStore client of our own there aborted one run in three at exit, measured on torch 2.14.)
        dist.init_process_group(backend)
        return
    try:
        store = dist.TCPStore(addr, port, world, is_master=rank == 0, timeout=timedelta(seconds=limit))
    except (RuntimeError, OSError, ValueError) as exc:  # torch's DistStoreError and DistNetworkError included
        raise RendezvousError(f"the {world} processes of this distributed run did not meet within {limit:.0f} s at "
                              f"{addr}:{port} (process {rank}: {str(exc).splitlines()[0] if str(exc) else exc!r}); "
                              "a node may be down, or unable to reach the first node's address") from exc
    # Met: from now on the store waits as long as torch's process groups do (NCCL reads its id from it at the first
    # collective, which rank 0 may reach minutes later, e.g. after waiting for its device).
    store.set_timeout(default_pg_timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)


def _seconds(given: str | None) -> float:
    if given is None or not given.strip():
        return RENDEZVOUS_S
    try:
        seconds = float(given)
    except ValueError:
        raise ValueError(f"{RENDEZVOUS_ENV}: seconds, a number, got {given!r}") from None
    if not 0 < seconds < 86_400:
        raise ValueError(f"{RENDEZVOUS_ENV}: more than 0 and less than a day, got {given}")
    return seconds


def distributed_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) of this process: torchrun's variables, else Slurm's (``srun`` starting one task
    per GPU, ``effnet.queue.slurm``'s script exporting MASTER_ADDR and MASTER_PORT), else a single process."""
    env = os.environ
    if "WORLD_SIZE" not in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        env["WORLD_SIZE"], env["RANK"] = env["SLURM_NTASKS"], env["SLURM_PROCID"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    return int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))

