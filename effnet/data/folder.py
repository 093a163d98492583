"""Your own images as a dataset: one subfolder per class, optionally under ``train/`` and ``test/``.

    photos/cat/1.jpg, photos/dog/7.png, ...            -> a seeded, per-class test split is held out
    photos/train/cat/..., photos/test/cat/...          -> the given split is used

Every file goes through the upload decoder (``effnet.data.images``: bounded, any format Pillow reads, bombs
refused); files that are not readable images are skipped and counted, never fatal. Each image is
decoded once, squared (resized, not cropped: a CAM maps back onto the whole picture) to the
resolution asked for, and kept as the uint8 ``(N, 3, S, S)`` tensors the trainer already uses for
CIFAR-100. The result is cached beside the images (``.effnet-cache/``), keyed by the resolution and a
fingerprint of every file's name, size and time, and read back with ``weights_only=True``.

A zip of such a folder (the app's upload) is unpacked only after the same checks as a run bundle:
no path escapes, no links, bounded member count and sizes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from effnet.base import access, files, locks
from effnet.base.access import Caller
from effnet.base.safezip import UnsafeZip, check_zip, extract_member
from effnet.data.cifar import Cifar100, DataError, Split
from effnet.data.images import decode_image

TEST_FRACTION = 0.2
MIN_PER_CLASS = 2  # one to train on and one to test: fewer and the class cannot be learned or measured
MAX_IMAGES = 200_000
CACHE = ".effnet-cache"
SPLITS = ("train", "test")
NO_SUPERCLASS = "(no superclasses)"
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Listing:
    """The image files of each class (per split when the folder has train/ and test/)."""

    classes: list[str]
    files: dict[str, list[tuple[Path, int]]]  # split ("all", or "train"/"test") -> (file, class index)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.is_symlink() and not d.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    """Plain files under ``folder`` (any depth), links and hidden files left out."""
    found = []
    for base, dirs, names in os.walk(folder):  # os.walk does not follow links to folders
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(base) / n for n in sorted(names) if not n.startswith(".") and not (Path(base) / n).is_symlink()]
    return found


def list_folder(folder: str | os.PathLike) -> Listing:
    """The classes and their files; ``DataError`` saying what is wrong with the folder's shape."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        raise DataError(f"{folder} is not a folder of class folders (one subfolder per class)")
    top = [d.name for d in _class_folders(folder)]
    split_layout = set(SPLITS) <= set(top)
    roots = {s: folder / s for s in SPLITS} if split_layout else {"all": folder}
    classes = sorted({d.name for root in roots.values() for d in _class_folders(root)})
    if len(classes) < 2:
        raise DataError(f"{folder} has {len(classes)} class folder(s); a dataset needs at least 2 "
                        "(one subfolder per class, named after it)")
    files = {s: [(f, classes.index(d.name)) for d in _class_folders(root) for f in _files(d)]
             for s, root in roots.items()}
    total = sum(len(v) for v in files.values())
    if total > MAX_IMAGES:
        raise DataError(f"{folder} has {total:,} files; at most {MAX_IMAGES:,} images are read")
    return Listing(classes, files)


def count_classes(folder: str | os.PathLike) -> int:
    """How many classes ``folder`` holds (the model's output size), without reading any image."""
    return len(list_folder(folder).classes)


def _fingerprint(listing: Listing, size: int) -> str:
    h = hashlib.sha256(f"{size}|{listing.classes}".encode())
    for split, items in sorted(listing.files.items()):
        for path, label in items:
            st = path.stat()
            h.update(f"{split}|{path.name}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _decode_all(items: list[tuple[Path, int]], size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images, labels, skipped): every readable image squared to ``size``; unreadable ones counted."""
    import torch

    images, labels, skipped = [], [], 0
    for path, label in items:
        try:
            picture = decode_image(files.read_file(path, max_bytes=64 * 1024**2), path.name, max_side=4 * size)
        except (ValueError, OSError, files.Damaged):
            skipped += 1
            continue
        square = picture.resize((size, size), resample=3, reducing_gap=2.0)  # bicubic
        images.append(torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1))
        labels.append(label)
    if not images:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), skipped
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), skipped


def _test_count(images: int) -> int:
    """How many of a class's ``images`` go to the test split: ``TEST_FRACTION``, at least one."""
    return max(1, round(TEST_FRACTION * images))


def _split_test(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, a seeded ``TEST_FRACTION`` (at least one image) held out for the test split."""
    import torch

    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = _test_count(len(idx))
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _check_counts(classes: list[str], labels: torch.Tensor, folder: Path, skipped: int) -> None:
    import torch

    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    thin = [f"{name} ({n})" for name, n in zip(classes, counts, strict=True) if n < MIN_PER_CLASS]
    if thin:
        why = f"; {skipped} file(s) were not readable images" if skipped else ""
        raise DataError(f"{folder}: every class needs at least {MIN_PER_CLASS} readable images; too few in "
                        f"{', '.join(thin)}{why}")


def _split(images: torch.Tensor, labels: torch.Tensor) -> Split:
    import torch

    return Split(images, labels, torch.zeros_like(labels))


def _build(folder: Path, listing: Listing, size: int, seed: int) -> tuple[Cifar100, int]:
    decoded = {s: _decode_all(items, size) for s, items in listing.files.items()}
    skipped = sum(d[2] for d in decoded.values())
    if "all" in decoded:
        images, labels, _ = decoded["all"]
        _check_counts(listing.classes, labels, folder, skipped)
        train_idx, test_idx = _split_test(labels, seed)
        train, test = _split(images[train_idx], labels[train_idx]), _split(images[test_idx], labels[test_idx])
    else:
        _check_counts(listing.classes, decoded["train"][1], folder / "train", skipped)
        train, test = _split(*decoded["train"][:2]), _split(*decoded["test"][:2])
        if len(test) == 0:
            raise DataError(f"{folder / 'test'} has no readable images")
    n = len(listing.classes)
    return Cifar100(train, test, listing.classes, [NO_SUPERCLASS], [0] * n), skipped


def load_folder(folder: str | os.PathLike, size: int, seed: int = 0) -> tuple[Cifar100, int]:
    """(dataset, files skipped as unreadable) for the class folders in ``folder`` at ``size`` px, cached."""
    import torch

    folder = Path(folder)
    listing = list_folder(folder)
    cache = folder / CACHE / f"{size}px-seed{seed}-{_fingerprint(listing, size)}.pt"
    try:
        return _from_cache(torch.load(cache, map_location="cpu", weights_only=True), listing.classes)
    except Exception:  # none yet, or damaged in any way: decode again (the cache is never trusted)
        pass
    data, skipped = _build(folder, listing, size, seed)
    state = {"train": [data.train.images, data.train.labels], "test": [data.test.images, data.test.labels],
             "classes": data.fine_names, "skipped": skipped}
    try:
        cache.parent.mkdir(exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        files.atomic_write_bytes(cache, buf.getvalue())
    except OSError:
        pass  # a read-only folder: it works, only slower next time
    return data, skipped


def _from_cache(state: dict, classes: list[str]) -> tuple[Cifar100, int]:
    """A cache file is trusted no more than any other: shapes, types and labels are checked."""
    import torch

    if state["classes"] != classes:
        raise ValueError("cache: other classes")
    splits = []
    for name in SPLITS:
        images, labels = state[name]
        if (images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or labels.dtype != torch.long
                or len(labels) != len(images) or (len(labels) and not 0 <= labels.min() <= labels.max() < len(classes))):
            raise ValueError("cache: malformed")
        splits.append(_split(images, labels))
    return Cifar100(splits[0], splits[1], classes, [NO_SUPERCLASS], [0] * len(classes)), int(state["skipped"])


# ----------------------------------------------------------------------------- a zip of class folders
OWN = "own"  # <data folder>/own/<name>/: the datasets uploaded in the app
INFO = ".dataset.json"  # beside the class folders: owner, bytes, readable images per class (counted at upload)
STAGING = access.UNPACKING  # ".staging-": work in flight, not counted in the disk budget


@dataclass(frozen=True)
class OwnDataset:
    """A dataset uploaded in the app, as its ``.dataset.json`` describes it (counted once, when it was added)."""

    name: str
    folder: Path
    owner: str | None
    bytes: int
    counts: dict[str, int]  # readable images per class
    skipped: int  # files that were not readable images (deleted at upload)
    split: tuple[int, int]  # (training, test) images the run's split gives

    @property
    def classes(self) -> list[str]:
        return sorted(self.counts)


def _readable(path: Path) -> bool:
    """Whether ``path`` opens as an image the upload decoder accepts (its header only: quick for 50,000 files)."""
    from PIL import Image, UnidentifiedImageError

    from effnet.data.images import FORMATS

    try:
        with Image.open(path, formats=FORMATS) as img:
            return img.size[0] * img.size[1] > 0
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return False


def _count_and_prune(root: Path) -> tuple[dict[str, int], int]:
    """Readable images per class under ``root``; files that are not images are deleted (and counted), so a zip of
    junk leaves no junk on the server's disk."""
    listing = list_folder(root)
    counts, skipped = dict.fromkeys(listing.classes, 0), 0
    for items in listing.files.values():
        for path, label in items:
            if _readable(path):
                counts[listing.classes[label]] += 1
            else:
                path.unlink()
                skipped += 1
    return counts, skipped


def _unwrap(staging: Path) -> None:
    """A zip of one top folder holding the class folders: move them up, so the dataset's folder is its name."""
    inner = _class_folders(staging)
    if len(inner) == 1 and not any(p.is_file() and not p.name.startswith(".") for p in staging.iterdir()):
        top = inner[0].rename(staging / f".unwrap-{secrets.token_hex(4)}")
        for child in top.iterdir():
            child.rename(staging / child.name)
        top.rmdir()


def _check_quota(base: Path, caller: Caller | None, declared: int, unpacked: int | None = None) -> int:
    """The bytes this upload may unpack to (``access.dataset_allowance``); ``DataError`` when refused."""
    def held() -> tuple[int, int]:
        mine = [d for d in own_datasets(base.parent) if caller.counts(d.owner)]
        return len(mine), sum(d.bytes for d in mine)

    try:
        return access.dataset_allowance(caller, held, declared, base.parent, MAX_ZIP_BYTES, unpacked)
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def unpack_zip(data: bytes | io.BufferedIOBase, data_root: str | os.PathLike, name: str,
               caller: Caller | None = None) -> OwnDataset:
    """Add an uploaded zip of class folders as the dataset ``<data_root>/own/<name>``, owned by ``caller``.

    Every member is checked before one is written, and the zip may unpack to no more than the caller's quota
    allows (declared sizes, each member stopped at its declared size). It unpacks into a hidden staging folder
    (held by a lock; ``tidy`` removes one a crash left) and appears under its name only when complete, with
    every class holding at least ``MIN_PER_CLASS`` readable images. ``DataError`` saying why when refused;
    nothing is left behind then.
    """
    import shutil

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}", str(name)):
        raise DataError("name: letters, digits, '.', '-' and '_' only (at most 40), e.g. leaves")
    base = Path(data_root) / OWN
    base.mkdir(parents=True, exist_ok=True)
    if (base / name).exists() or (base / name).is_symlink():
        raise DataError(f"a dataset called {name} exists already; choose another name")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"not a zip file ({exc})") from exc
    token = secrets.token_hex(6)
    staging, lock = base / f"{STAGING}{token}", base / f"{STAGING}{token}.lock"
    with zf, locks.exclusive(lock):
        try:
            declared = sum(i.file_size for i in zf.infolist())
            members = check_zip(zf, MAX_ZIP_MEMBERS, lambda _: 64 * 1024**2, _check_quota(base, caller, declared))
            for info in members:
                extract_member(zf, info, staging.joinpath(*info.filename.split("/")))
            staging.mkdir(exist_ok=True)
            _unwrap(staging)
            counts, skipped = _count_and_prune(staging)
            thin = [f"{c} ({n})" for c, n in counts.items() if n < MIN_PER_CLASS]
            if thin:
                raise DataError(f"every class needs at least {MIN_PER_CLASS} readable images; too few in "
                                + ", ".join(thin) + (f" ({skipped} file(s) were not images)" if skipped else ""))
            size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
            files.write_json(staging / INFO, {"owner": caller.owner if caller else None, "bytes": size,
                                              "counts": counts, "skipped": skipped, "split": _listed_sizes(staging)})
            with locks.exclusive(base / ".names.lock"):  # two uploads of one name: the first wins
                if (base / name).exists():
                    raise DataError(f"a dataset called {name} exists already; choose another name")
                # The quota again, under the lock, with the real size: parallel uploads all passed the first check
                # (8 at once gave 8 datasets against a limit of 3).
                _check_quota(base, caller, declared, unpacked=size)
                os.rename(staging, base / name)
        except (UnsafeZip, DataError, OSError, zipfile.BadZipFile) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, DataError):
                raise
            raise DataError(f"refused: {exc}") from exc
        finally:
            lock.unlink(missing_ok=True)
    return _describe(base / name)


# ----------------------------------------------------------------------------- datasets the app knows
def _describe(folder: Path) -> OwnDataset | None:
    try:
        info = files.load_json(folder / INFO)
    except files.Damaged:
        return None
    counts = info.get("counts") if isinstance(info, dict) else None
    if not isinstance(counts, dict) or len(counts) < 2 or not all(isinstance(v, int) for v in counts.values()):
        return None
    split = info.get("split")
    if not (isinstance(split, list) and len(split) == 2 and all(isinstance(v, int) for v in split)):
        return None
    owner = info.get("owner") if access.valid_owner_token(info.get("owner")) else None
    return OwnDataset(folder.name, folder, owner, int(info.get("bytes") or 0), counts, int(info.get("skipped") or 0),
                      (split[0], split[1]))


def own_datasets(data_root: str | os.PathLike) -> list[OwnDataset]:
    """Every complete dataset uploaded into ``<data_root>/own/`` (staging folders, links and strays are not)."""
    base = Path(data_root) / OWN
    if not base.is_dir() or base.is_symlink():
        return []
    found = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir() or entry.is_symlink():
            continue
        described = _describe(entry)
        if described is not None:
            found.append(described)
    return found


def delete_dataset(data_root: str | os.PathLike, name: str, caller: Caller | None = None) -> None:
    """Remove an uploaded dataset: its owner or the teacher only (``PermissionError`` otherwise)."""
    import shutil

    found = {d.name: d for d in own_datasets(data_root)}
    if name not in found:
        raise DataError(f"there is no dataset called {name}")
    access.check(caller, found[name], "delete", "dataset")
    shutil.rmtree(found[name].folder)
    access.forget_usage()


def tidy(data_root: str | os.PathLike) -> list[str]:
    """Staging folders an upload left when its process was killed (their lock is free): removed."""
    import shutil

    base = Path(data_root) / OWN
    done = []
    for staging in sorted(base.glob(f"{STAGING}*")) if base.is_dir() else []:
        if staging.is_dir() and not locks.is_held(base / f"{staging.name}.lock"):
            shutil.rmtree(staging, ignore_errors=True)
            (base / f"{staging.name}.lock").unlink(missing_ok=True)
            done.append(f"removed the interrupted upload {staging.name}")
    return done


def split_sizes(folder: str | os.PathLike) -> tuple[int, int]:
    """(training, test) images the folder will give: from its ``.dataset.json`` (an upload: readable images, counted
    once), else from its files (unreadable ones included)."""
    described = _describe(Path(folder))
    return described.split if described is not None else _listed_sizes(Path(folder))


def _listed_sizes(folder: Path) -> tuple[int, int]:
    listing = list_folder(folder)
    if "all" not in listing.files:
        return len(listing.files["train"]), len(listing.files["test"])
    labels = [label for _, label in listing.files["all"]]
    per_class = [labels.count(c) for c in range(len(listing.classes))]
    test = sum(_test_count(n) for n in per_class if n)
    return len(labels) - test, test
