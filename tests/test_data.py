"""The CIFAR-100 reader on generated archives in the official format, the split and augmentation."""

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import py2_pickle, random_split, split_dict, write_cifar_archive, write_cifar_folder

from effnet.data.cifar import DataError, data_dir, load_cifar100, read_folder, split_train_val
from effnet.training.step import augment


def test_generated_files_are_python2_pickles_that_load_both_ways(cifar_dir):
    load_cifar100(cifar_dir)
    raw = (cifar_dir / "cifar-100-python" / "train").read_bytes()
    assert b"U\x04data" in raw  # SHORT_BINSTRING 'data': a Python 2 str, as in the official files
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw
    with open(cifar_dir / "cifar-100-python" / "train", "rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")
    assert b"data" in as_bytes and as_bytes[b"data"].shape == (320, 3072)


def test_reader_unpacks_the_archive_and_reads_the_official_layout(tmp_path):
    images, labels = random_split(50, seed=3)
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", n_train=50, n_test=20, seed=3)
    data = load_cifar100(tmp_path, download=False)
    assert (tmp_path / "cifar-100-python" / "meta").is_file()
    assert data.train.images.shape == (50, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert len(data.test) == 20 and data.fine_names[7] == "fine_07" and len(data.coarse_names) == 20
    # rows are R plane, G plane, B plane: reshape(3, 32, 32) gives channels-first images
    assert torch.equal(data.train.images, torch.from_numpy(images))
    assert torch.equal(data.train.labels, torch.from_numpy(labels))
    assert data.fine_to_coarse[int(labels[0])] == int(labels[0]) // 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_reader_accepts_str_keys_written_from_python3(tmp_path):
    folder = write_cifar_folder(tmp_path, random_split(10, 0), random_split(5, 1))
    plain = {k.decode(): v for k, v in split_dict(*random_split(10, 0), b"x").items()}
    (folder / "train").write_bytes(pickle.dumps(plain, protocol=4))
    assert len(read_folder(folder).train) == 10


def corrupt(folder: Path, name: str, **changes: object) -> None:
    d = split_dict(*random_split(10, 0), b"x")
    d.update({k.encode(): v for k, v in changes.items()})
    for key in [k for k, v in d.items() if v is None]:
        del d[key]
    (folder / name).write_bytes(py2_pickle(d))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"fine_labels": None}, "lacks the keys"),
        ({"data": np.zeros((10, 1024), np.uint8)}, "shape"),
        ({"data": np.zeros((10, 3072), np.float32)}, "uint8"),
        ({"fine_labels": [100] * 10}, "0..99"),
        ({"coarse_labels": [-1] * 10}, "0..19"),
        ({"fine_labels": [1] * 9}, "must be 10 integers"),
    ],
)
def test_malformed_files_are_refused_with_the_reason(tmp_path, changes, message):
    folder = write_cifar_folder(tmp_path, random_split(10, 0), random_split(5, 1))
    corrupt(folder, "train", **changes)
    with pytest.raises(DataError, match=message):
        read_folder(folder)


def test_missing_file_and_hostile_pickle_are_refused(tmp_path):
    folder = write_cifar_folder(tmp_path, random_split(10, 0), random_split(5, 1))
    (folder / "meta").unlink()
    with pytest.raises(DataError, match="lacks the files"):
        read_folder(folder)
    write_cifar_folder(tmp_path, random_split(10, 0), random_split(5, 1))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "test").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        read_folder(folder)
    assert not marker.exists()


def test_missing_data_offline_says_where_to_put_the_archive_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path / "empty")
    message = str(err.value)
    assert "cifar-100-python.tar.gz" in message and str((tmp_path / "empty").resolve()) in message
    assert "eb9058c3a382ffc7106e4002c42a8d85" in message
    assert not (tmp_path / "empty").exists()  # not even the folder: a mistyped --data-dir is not left behind


def test_truncated_archive_is_reported_and_not_mistaken_for_data(tmp_path):
    archive = write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", n_train=40, n_test=10)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="could not be unpacked"):
        load_cifar100(tmp_path, download=False)
    assert not (tmp_path / "cifar-100-python").exists()


def test_archive_without_the_folder_is_refused(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "x.txt", arcname="x.txt")
    with pytest.raises(DataError, match="does not contain"):
        load_cifar100(tmp_path, download=False)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFNET_DATA", str(tmp_path))
    assert data_dir() == tmp_path and data_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("EFFNET_DATA")
    assert data_dir() == Path("data")


def test_validation_split_is_deterministic_and_disjoint():
    train, val = split_train_val(1000, 200)
    again_train, again_val = split_train_val(1000, 200)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert len(val) == 200 and len(set(train.tolist()) | set(val.tolist())) == 1000
    assert not torch.equal(split_train_val(1000, 200, seed=1)[1], val)
    with pytest.raises(ValueError, match="^val_size:.*leaves none"):
        split_train_val(100, 100)


def test_augmentation_crops_a_shifted_window_and_flips():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 32, 32)
    out = augment(images, torch.Generator().manual_seed(0), "standard")
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(2):
        windows = [padded[i, :, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert torch.equal(augment(images, torch.Generator().manual_seed(0), "standard"), out)
    assert torch.equal(augment(images, torch.Generator(), "none"), images)
    # cutout draws the same crops and flips first, then zeroes at most one 8x8 square per image
    full = torch.full((16, 3, 32, 32), 200, dtype=torch.uint8)
    std = augment(full, torch.Generator().manual_seed(1), "standard")
    cut = augment(full, torch.Generator().manual_seed(1), "cutout")
    holes = (cut != std).any(dim=1).sum(dim=(1, 2))
    assert (holes <= 64).all() and (holes > 0).sum() >= 12
