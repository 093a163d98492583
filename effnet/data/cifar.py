"""CIFAR-100 from its official files, kept as uint8 tensors on the training device.

Layout on disk (as torchvision downloads it): ``<data dir>/cifar-100-python/{train,test,meta}``,
each a pickle written by Python 2 (see the dataset page). The reader here accepts both ``str`` and
``bytes`` keys, checks structure (files, keys, shapes, label ranges) rather than checksums, so any
number of images is valid, and unpickles with an allow-list: a data file cannot run code.

Missing data is downloaded (md5 checked) where the network allows; the download and extraction
happen in a temporary folder that is renamed into place only when complete, so a broken download
never leaves something that looks like data.

Reading the files needs numpy only; torch is imported when the images become tensors, so counting a
copy or naming the data folder (the queue, ``jobs list``) never pays for it. Augmentation is the
training step's (``effnet.training.step.augment``).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import Tensor


URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FOLDER = "cifar-100-python"
NUM_FINE, NUM_COARSE = 100, 20


class DataError(RuntimeError):
    """The dataset is missing or malformed; the message says what to do."""


@dataclass(frozen=True)
class Split:
    """Images ``(N, 3, S, S)`` uint8 (S = 32 for CIFAR-100, the spec's resolution for a folder) and fine/coarse
    labels ``(N,)`` int64."""

    images: Tensor
    labels: Tensor
    coarse: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.coarse[index])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device), self.coarse.to(device))


@dataclass(frozen=True)
class Cifar100:
    train: Split
    test: Split
    fine_names: list[str]
    coarse_names: list[str]
    fine_to_coarse: list[int]


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$EFFNET_DATA``, else ``./data``."""
    return Path(path or os.environ.get("EFFNET_DATA") or "data")


class _SafeUnpickler(pickle.Unpickler):
    """Only what CIFAR's pickles need: numpy arrays and dtypes. Anything else is refused."""

    _ALLOWED: ClassVar[set[str]] = {"_reconstruct", "ndarray", "dtype", "scalar"}

    def find_class(self, module: str, name: str) -> object:
        if module.split(".")[0] == "numpy" and name in self._ALLOWED:
            if name in ("ndarray", "dtype"):
                return getattr(np, name)
            from numpy._core import multiarray

            return getattr(multiarray, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _text(value: object) -> object:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _load_pickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            raw = _SafeUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DataError(f"{path} is not a readable CIFAR-100 pickle ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path} holds a {type(raw).__name__}, expected a dict")
    return {_text(k): v for k, v in raw.items()}


def _require(d: dict[str, object], path: Path, *keys: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataError(f"{path} lacks the keys {missing} (has {sorted(d)})")


def _labels(d: dict[str, object], key: str, n: int, limit: int, path: Path) -> Tensor:
    import torch

    labels = np.asarray(d[key])
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: '{key}' must be {n} integers, got shape {labels.shape} of {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= limit):
        raise DataError(f"{path}: '{key}' must lie in 0..{limit - 1}, found {labels.min()}..{labels.max()}")
    return torch.from_numpy(labels.astype(np.int64))


def _read_split(path: Path) -> Split:
    import torch

    d = _load_pickle(path)
    _require(d, path, "data", "fine_labels", "coarse_labels")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    n = data.shape[0]
    if n == 0:
        raise DataError(f"{path} holds no images")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(n, 3, 32, 32).copy())
    return Split(images, _labels(d, "fine_labels", n, NUM_FINE, path), _labels(d, "coarse_labels", n, NUM_COARSE, path))


def read_folder(folder: Path) -> Cifar100:
    """Read and check an extracted ``cifar-100-python`` folder."""
    missing = [name for name in ("train", "test", "meta") if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} lacks the files {missing}: expected train, test and meta")
    meta = _load_pickle(folder / "meta")
    _require(meta, folder / "meta", "fine_label_names", "coarse_label_names")
    fine = [str(_text(n)) for n in meta["fine_label_names"]]  # type: ignore[union-attr]
    coarse = [str(_text(n)) for n in meta["coarse_label_names"]]  # type: ignore[union-attr]
    if len(fine) != NUM_FINE or len(coarse) != NUM_COARSE:
        raise DataError(f"{folder / 'meta'}: expected {NUM_FINE} fine and {NUM_COARSE} coarse names, "
                        f"got {len(fine)} and {len(coarse)}")
    train, test = _read_split(folder / "train"), _read_split(folder / "test")
    mapping = [0] * NUM_FINE
    for split in (train, test):
        for f, c in zip(split.labels.tolist(), split.coarse.tolist(), strict=True):
            mapping[f] = c
    return Cifar100(train, test, fine, coarse, mapping)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract(archive: Path, root: Path) -> None:
    """Unpack into a temporary folder inside ``root``, then rename the result into place."""
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{archive} could not be unpacked ({exc}); delete it and download it again") from exc
        extracted = Path(tmp) / FOLDER
        if not extracted.is_dir():
            raise DataError(f"{archive} does not contain a '{FOLDER}' folder")
        read_folder(extracted)  # check before it becomes the data
        try:
            os.replace(extracted, root / FOLDER)
        except OSError as exc:  # another process (a second rank, a second run) unpacked the same archive first
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (root / FOLDER).is_dir():
                raise


def _download(root: Path) -> None:
    from torchvision.datasets.utils import download_url

    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        download_url(URL, tmp, ARCHIVE, md5=None)
        got = _md5(Path(tmp) / ARCHIVE)
        if got != ARCHIVE_MD5:
            raise DataError(f"the downloaded archive has md5 {got}, expected {ARCHIVE_MD5}")
        _extract(Path(tmp) / ARCHIVE, root)


def missing_data_message(root: Path, reason: str = "") -> str:
    """What to do when CIFAR-100 is not there; shown by the CLI and the app alike."""
    why = f" ({reason})" if reason else ""
    return (
        f"CIFAR-100 is not in {root.resolve()} and could not be downloaded{why}. "
        f"Download {URL} (md5 {ARCHIVE_MD5}) on a machine with internet and put {ARCHIVE} into "
        f"{root.resolve()} (or its unpacked '{FOLDER}' folder), or point --data-dir / EFFNET_DATA at "
        "the folder that holds it."
    )


def dataset_present(root: str | os.PathLike | None = None) -> bool:
    """Whether ``root`` holds the unpacked folder or the archive (the download is not attempted)."""
    root = data_dir(root)
    return (root / FOLDER).is_dir() or (root / ARCHIVE).is_file()


# CIFAR-100 as published: 50,000 training and 10,000 test images (a copy here may hold fewer).
OFFICIAL_COUNTS = (50_000, 10_000)


def cifar_counts(root: str | os.PathLike | None = None) -> tuple[int, int]:
    """(training, test) images of the CIFAR-100 copy in ``root``: counted from its files (once per version of
    them; an archive is unpacked first), the published counts when it is not here yet (a run downloads it),
    ``DataError`` when damaged."""
    root = data_dir(root)
    folder = root / FOLDER
    if not folder.is_dir():
        if not (root / ARCHIVE).is_file():
            return OFFICIAL_COUNTS
        _extract(root / ARCHIVE, root)  # what the first run would do anyway
    stamps = tuple((folder / n).stat().st_mtime_ns if (folder / n).is_file() else 0 for n in ("train", "test"))
    return _counted(folder, stamps)


@functools.lru_cache(maxsize=8)
def _counted(folder: Path, stamps: tuple[int, ...]) -> tuple[int, int]:
    data = read_folder(folder)
    return len(data.train), len(data.test)


def load_cifar100(root: str | os.PathLike | None = None, download: bool = True) -> Cifar100:
    """CIFAR-100 from ``root`` (see ``data_dir``): the folder, else the archive there, else a download."""
    root = data_dir(root)
    folder = root / FOLDER
    if folder.is_dir():
        return read_folder(folder)
    if (root / ARCHIVE).is_file():
        _extract(root / ARCHIVE, root)
        return read_folder(folder)
    if not download:
        raise DataError(missing_data_message(root, "download disabled"))
    made = [p for p in (root, *root.parents) if not p.exists()]  # a mistyped folder is not left by a failed download
    try:
        root.mkdir(parents=True, exist_ok=True)
        _download(root)
    except Exception as exc:  # no network, DNS failure, HTTP error, interrupted transfer...
        if made:
            shutil.rmtree(made[-1], ignore_errors=True)
        if isinstance(exc, DataError):
            raise
        raise DataError(missing_data_message(root, f"{exc.__class__.__name__}: {exc}")) from exc
    return read_folder(folder)


def split_train_val(n: int, val_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Deterministic (train, val) indices: a seeded shuffle, the last ``val_size`` held out."""
    import torch

    if val_size < 0:
        raise ValueError(f"val_size: must be 0 or more, got {val_size}")
    if n - val_size < 1:
        raise ValueError(f"val_size: holding out {val_size} of {n} training images leaves none to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n - val_size].sort().values, order[n - val_size :].sort().values
