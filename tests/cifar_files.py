"""Write small CIFAR-100 archives in exactly the official on-disk format.

The official pickles were written by Python 2: their keys and strings are Python 2 ``str``
(pickle opcodes SHORT_BINSTRING/BINSTRING), which Python 3 reads as ``str`` with
``encoding="latin1"`` and as ``bytes`` with ``encoding="bytes"``. A pickle written the ordinary
way from Python 3 would hide a reader that handles only one of those, so this writer emits the
Python 2 opcodes and names numpy's reconstructor ``numpy.core.multiarray`` as old files do.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import ClassVar

import numpy as np

FINE_NAMES = [f"fine_{i:02d}" for i in range(100)]
COARSE_NAMES = [f"coarse_{i:02d}" for i in range(20)]


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING opcodes), protocol 2."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def split_dict(images: np.ndarray, fine: np.ndarray, name: bytes) -> dict[bytes, object]:
    """One split as the official files hold it: rows of 3072 bytes (R plane, G plane, B plane)."""
    n = len(images)
    return {
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        b"batch_label": name,
        b"fine_labels": [int(x) for x in fine],
        b"coarse_labels": [int(x) // 5 for x in fine],
        b"data": np.ascontiguousarray(images.reshape(n, 3072), dtype=np.uint8),
    }


def write_cifar_folder(root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` from (images N x 3 x 32 x 32 uint8, fine labels)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train").write_bytes(py2_pickle(split_dict(*train, b"training batch 1 of 1")))
    (folder / "test").write_bytes(py2_pickle(split_dict(*test, b"testing batch 1 of 1")))
    meta = {b"fine_label_names": [n.encode() for n in FINE_NAMES],
            b"coarse_label_names": [n.encode() for n in COARSE_NAMES]}
    (folder / "meta").write_bytes(py2_pickle(meta))
    return folder


def random_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images with a learnable signal: each class has its own mean colour, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 100, n)
    palette = np.random.default_rng(1234).integers(30, 225, (100, 3))
    images = palette[labels][:, :, None, None] + rng.normal(0, 25, (n, 3, 32, 32))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_cifar_archive(path: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """A ``cifar-100-python.tar.gz`` laid out like the official one, with random images."""
    staging = path.parent / ".staging"
    folder = write_cifar_folder(staging, random_split(n_train, seed), random_split(n_test, seed + 1))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    staging.rmdir()
    return path
