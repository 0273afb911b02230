"""The data layer: idx reader, dataset sources, batch augmentation, the resumable iterator, image folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo.data.sources as sources
from zoo.data import BatchAugment, BatchIterator, dataset_spec, load_dataset, to_tensors
from zoo.data.augment import normalize, random_crop, random_hflip
from zoo.data.idx import read_idx_images, read_idx_labels
from zoo.errors import DataError

# ---------------------------------------------------------------------------------------------- idx files


def _idx3_bytes(images: np.ndarray, magic: int = 2051) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


def _idx1_bytes(labels: np.ndarray, magic: int = 2049) -> bytes:
    return struct.pack(">II", magic, len(labels)) + labels.astype(np.uint8).tobytes()


def _write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


@pytest.fixture
def tiny_idx(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)  # rows != cols, to catch a transposition
    labels = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    img_path = _write_gz(tmp_path / "images-idx3-ubyte.gz", _idx3_bytes(images))
    lbl_path = _write_gz(tmp_path / "labels-idx1-ubyte.gz", _idx1_bytes(labels))
    return img_path, lbl_path, images, labels


def test_idx_round_trip(tiny_idx):
    img_path, lbl_path, images, labels = tiny_idx
    got_images = read_idx_images(img_path)
    got_labels = read_idx_labels(lbl_path, num_classes=10)
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 4, 3)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, labels.astype(np.int64))


def test_idx_truncated_gzip_names_file(tiny_idx, tmp_path):
    img_path = tiny_idx[0]
    cut = tmp_path / "cut-idx3-ubyte.gz"
    data = img_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx_images(cut)
    assert str(cut) in str(info.value)


def test_idx_not_gzip_names_file(tmp_path):
    raw = tmp_path / "plain-idx3-ubyte.gz"
    raw.write_bytes(_idx3_bytes(np.zeros((1, 2, 2), np.uint8)))  # idx content, but not gzip-compressed
    with pytest.raises(DataError) as info:
        read_idx_images(raw)
    assert str(raw) in str(info.value)


def test_idx_truncated_payload_names_file(tmp_path):
    path = _write_gz(tmp_path / "short-idx3-ubyte.gz", _idx3_bytes(np.zeros((3, 2, 2), np.uint8))[:-1])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx_images(path)
    assert str(path) in str(info.value)
    header_only = _write_gz(tmp_path / "header-idx1-ubyte.gz", b"\x00\x00\x08")
    with pytest.raises(DataError, match="truncated") as info:
        read_idx_labels(header_only, num_classes=10)
    assert str(header_only) in str(info.value)


def test_idx_wrong_magic_names_file(tiny_idx, tmp_path):
    _, lbl_path, images, labels = tiny_idx
    # A label file passed as images, and an image file with a wrong magic passed as labels.
    with pytest.raises(DataError, match="magic") as info:
        read_idx_images(lbl_path)
    assert str(lbl_path) in str(info.value)
    bad = _write_gz(tmp_path / "bad-idx1-ubyte.gz", _idx1_bytes(labels, magic=2051))
    with pytest.raises(DataError, match="magic") as info:
        read_idx_labels(bad, num_classes=10)
    assert str(bad) in str(info.value)


def test_idx_label_out_of_range_names_file(tmp_path):
    path = _write_gz(tmp_path / "labels-idx1-ubyte.gz", _idx1_bytes(np.array([0, 1, 10])))
    with pytest.raises(DataError) as info:
        read_idx_labels(path, num_classes=10)
    assert str(path) in str(info.value)
    assert "10" in str(info.value)
    np.testing.assert_array_equal(read_idx_labels(path, num_classes=11), [0, 1, 10])


def _fake_fashion_mnist_dir(folder: Path, n_images: int, n_labels: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for split, (img_name, lbl_name) in sources.FASHION_MNIST_FILES.items():
        del split
        _write_gz(folder / img_name, _idx3_bytes(rng.integers(0, 256, (n_images, 28, 28), dtype=np.uint8)))
        _write_gz(folder / lbl_name, _idx1_bytes(rng.integers(0, 10, n_labels)))
    return folder


def test_fashion_mnist_from_custom_dir(tmp_path, monkeypatch):
    folder = _fake_fashion_mnist_dir(tmp_path / "fm", n_images=6, n_labels=6)
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", folder)
    ds = load_dataset("fashion_mnist", "test")
    assert len(ds) == 6
    images, labels = to_tensors(ds, dataset_spec("fashion_mnist"))
    expected = read_idx_images(folder / sources.FASHION_MNIST_FILES["test"][0])
    np.testing.assert_array_equal(images[:, 0].numpy(), expected)
    assert labels.dtype == torch.int64


def test_fashion_mnist_count_mismatch_names_files(tmp_path, monkeypatch):
    folder = _fake_fashion_mnist_dir(tmp_path / "fm", n_images=6, n_labels=5)
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", folder)
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", "train")
    message = str(info.value)
    for name in sources.FASHION_MNIST_FILES["train"]:
        assert str(folder / name) in message
    assert "6" in message and "5" in message


# --------------------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist_test() -> datasets.Dataset:
    return load_dataset("fashion_mnist", "test")


def test_fashion_mnist_splits(fmnist_test):
    train = load_dataset("fashion_mnist", "train")
    for ds, rows in ((train, 60000), (fmnist_test, 10000)):
        assert isinstance(ds, datasets.Dataset)
        assert ds.num_rows == rows
        assert set(ds.column_names) == {"image", "label"}
        label = ds.features["label"]
        assert isinstance(label, datasets.ClassLabel)
        assert tuple(label.names) == sources.FASHION_MNIST_LABELS
        assert label.num_classes == 10


def test_fashion_mnist_to_tensors(fmnist_test):
    spec = dataset_spec("fashion_mnist")
    images, labels = to_tensors(fmnist_test, spec)
    assert images.dtype == torch.uint8 and images.shape == (10000, 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (10000,)
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert torch.bincount(labels).tolist() == [1000] * 10  # the test split is balanced
    small_x, small_y = to_tensors(fmnist_test, spec, limit=37)
    assert small_x.shape == (37, 1, 28, 28) and small_y.shape == (37,)
    assert torch.equal(small_x, images[:37]) and torch.equal(small_y, labels[:37])
    big_x, _ = to_tensors(fmnist_test, spec, limit=10**6)  # a limit beyond the split is the whole split
    assert len(big_x) == 10000


def test_fashion_mnist_aliases(fmnist_test):
    for alias in ("fmnist", "fashion-mnist"):
        assert dataset_spec(alias) is dataset_spec("fashion_mnist")
    ds = load_dataset("fmnist", "test")
    assert ds.num_rows == 10000
    assert torch.equal(
        to_tensors(ds, dataset_spec("fmnist"), limit=5)[1], to_tensors(fmnist_test, dataset_spec("fmnist"), limit=5)[1]
    )


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DataError) as info:
        load_dataset("mnist_fashon", "train")
    message = str(info.value)
    assert "mnist_fashon" in message
    for name in sources.DATASETS:
        assert name in message
    with pytest.raises(DataError):
        dataset_spec("cifar1000")


# ----------------------------------------------------------------------------------------------- augment


def _images(n: int, c: int = 1, h: int = 7, w: int = 9, seed: int = 0) -> torch.Tensor:
    """Random uint8 images with no zero pixel, so a zero-padded border is always recognisable."""
    return torch.randint(1, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_normalize_matches_hand_computation():
    x = _images(3, c=3, h=2, w=2)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    expected = torch.empty(x.shape, dtype=torch.float64)
    for c in range(3):
        expected[:, c] = (x[:, c].double() / 255.0 - mean[c]) / std[c]
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    assert x.dtype == torch.uint8  # the input is left untouched
    # a hand-checked pixel: 255 -> 1.0 -> (1 - 0.5) / 0.25 = 2
    assert normalize(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8), (0.5,), (0.25,)).item() == pytest.approx(2.0)


def test_random_crop_padding_zero_is_identity():
    x = _images(4)
    out = random_crop(x, 0, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def _window_offsets(out: torch.Tensor, x: torch.Tensor, padding: int) -> list[tuple[int, int]]:
    """For each sample, the (top, left) windows of its zero-padded input that equal the output."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (padding,) * 4)
    found = []
    for i in range(len(x)):
        matches = [
            (top, left)
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            if torch.equal(out[i], padded[i, :, top : top + h, left : left + w])
        ]
        assert len(matches) == 1, f"sample {i}: output is not exactly one window of the padded input ({matches})"
        found.append(matches[0])
    return found


@pytest.mark.parametrize("padding", [1, 3])
def test_random_crop_is_a_window_of_the_padded_input(padding):
    x = _images(12, c=2)
    out = random_crop(x, padding, torch.Generator().manual_seed(123))
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    offsets = _window_offsets(out, x, padding)
    assert len(set(offsets)) > 1, "every sample got the same window: the crop is not per-sample"
    # The same windows, drawn the way the docstring promises: top then left, uniform in [0, 2p].
    g = torch.Generator().manual_seed(123)
    top = torch.randint(0, 2 * padding + 1, (12,), generator=g)
    left = torch.randint(0, 2 * padding + 1, (12,), generator=g)
    assert offsets == list(zip(top.tolist(), left.tolist(), strict=True))


def test_random_crop_on_a_float_batch_and_channels_last():
    x = _images(5, c=3).float().contiguous(memory_format=torch.channels_last)
    out = random_crop(x, 2, torch.Generator().manual_seed(7))
    _window_offsets(out, x.contiguous(), 2)


def test_hflip_flips_exactly_the_chosen_samples():
    x = _images(16)
    out = random_hflip(x, torch.Generator().manual_seed(5))
    chosen = torch.rand(16, generator=torch.Generator().manual_seed(5)) < 0.5
    assert 0 < int(chosen.sum()) < 16  # the seed gives both cases
    for i in range(16):
        assert torch.equal(out[i], x[i].flip(-1) if chosen[i] else x[i]), f"sample {i}"
    assert not torch.equal(x[0], x[0].flip(-1))  # the images are not mirror-symmetric


def test_batch_augment_same_seed_same_output():
    x = _images(32, c=3, h=8, w=8)
    aug = BatchAugment((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), crop_padding=2, hflip=True)
    a = aug(x, torch.Generator().manual_seed(11))
    b = aug(x, torch.Generator().manual_seed(11))
    c = aug(x, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.shape == x.shape
    # no generator: normalisation only
    torch.testing.assert_close(aug(x), normalize(x, aug.mean, aug.std), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- BatchIterator

N_ITEMS = 100


def _indexed_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Labels are the sample indices; each image is filled with its index (mod 256) plus noise-free detail."""
    labels = torch.arange(N_ITEMS)
    images = _images(N_ITEMS, h=6, w=6, seed=3)
    images[:, :, 0, 0] = (labels % 256).to(torch.uint8)[:, None]
    return images, labels


IDENTITY = BatchAugment((0.0,), (1.0,))


def test_iterator_ranks_partition_the_global_batch():
    images, labels = _indexed_data()
    kw = dict(batch_size=8, transform=IDENTITY, shuffle=True, augment=False, seed=4, drop_last=True)
    single = list(BatchIterator(images, labels, **kw).epoch(1))
    ranks = [list(BatchIterator(images, labels, rank=r, world_size=2, **kw).epoch(1)) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == N_ITEMS // 8
    for b, (x, y) in enumerate(single):
        (x0, y0), (x1, y1) = ranks[0][b], ranks[1][b]
        assert len(y0) == len(y1) == 4
        assert set(y0.tolist()).isdisjoint(y1.tolist()), f"batch {b}: ranks share samples"
        assert set(y0.tolist()) | set(y1.tolist()) == set(y.tolist()), f"batch {b}: ranks do not cover the batch"
        for xs, ys in ((x0, y0), (x1, y1), (x, y)):  # images travel with their labels
            assert torch.equal(xs, normalize(images[ys], (0.0,), (1.0,)))


def test_iterator_len_and_last_batch():
    images, labels = _indexed_data()
    keep = BatchIterator(images, labels, 32, IDENTITY, drop_last=False)
    drop = BatchIterator(images, labels, 32, IDENTITY, drop_last=True)
    assert len(keep) == 4 and len(drop) == 3
    batches = list(keep.epoch(0))
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([y for _, y in batches]), labels)  # no shuffle: in order, each sample once
    assert sorted(torch.cat([y for _, y in drop.epoch(0)]).tolist()) == list(range(96))


@pytest.mark.parametrize("world_size", [1, 2])
def test_iterator_resume_mid_epoch_matches_uninterrupted(world_size):
    images, labels = _indexed_data()
    augment = BatchAugment((0.3,), (0.2,), crop_padding=2, hflip=True)
    for rank in range(world_size):
        it = BatchIterator(images, labels, 10, augment, shuffle=True, augment=True, seed=9, drop_last=True,
                           rank=rank, world_size=world_size)  # fmt: skip
        full = list(it.epoch(2))
        for k in (0, 3, len(it) - 1, len(it)):
            # a fresh iterator, as after a restart
            again = BatchIterator(images, labels, 10, augment, shuffle=True, augment=True, seed=9, drop_last=True,
                                  rank=rank, world_size=world_size)  # fmt: skip
            resumed = list(again.epoch(2, start_batch=k))
            assert len(resumed) == len(full) - k
            for (xa, ya), (xb, yb) in zip(resumed, full[k:], strict=True):
                assert torch.equal(ya, yb)
                assert torch.equal(xa, xb)
    # augmentation really happened (otherwise equality above would be trivial)
    x, y = next(iter(BatchIterator(images, labels, 10, augment, shuffle=True, augment=True, seed=9).epoch(2)))
    assert not torch.equal(x, normalize(images[y], (0.3,), (0.2,)))


def test_iterator_epochs_and_seeds_change_the_order():
    images, labels = _indexed_data()
    it = BatchIterator(images, labels, 10, IDENTITY, shuffle=True, seed=0)
    orders = [torch.cat([y for _, y in it.epoch(e)]) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(N_ITEMS))
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert torch.equal(orders[1], torch.cat([y for _, y in it.epoch(1)]))  # an epoch's order is fixed
    other_seed = BatchIterator(images, labels, 10, IDENTITY, shuffle=True, seed=1)
    assert not torch.equal(orders[0], torch.cat([y for _, y in other_seed.epoch(0)]))


def test_iterator_batch_size_must_divide_by_world_size():
    images, labels = _indexed_data()
    with pytest.raises(ValueError, match="divisible"):
        BatchIterator(images, labels, 10, IDENTITY, world_size=3)
    BatchIterator(images, labels, 12, IDENTITY, world_size=3)


# ------------------------------------------------------------------------------------------ image folder


@pytest.fixture
def image_root(tmp_path: Path) -> tuple[Path, Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        folder = tmp_path / "root" / "test" / cls
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "root" / "test" / "dog" / "notes.txt").write_text("not an image, ignored")
    bad = tmp_path / "root" / "test" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return tmp_path / "root", bad


def test_image_folder_corrupt_file_raises_naming_it(image_root):
    root, bad = image_root
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "test", root=root)
    assert str(bad) in str(info.value)


def test_image_folder_skip_unreadable(image_root):
    root, bad = image_root
    with pytest.warns(UserWarning, match="1 unreadable"):
        ds = load_dataset("cifar10", "test", root=root, skip_unreadable=True)
    assert ds.num_rows == 6
    assert ds.features["label"].names == ["cat", "dog"]
    assert ds["label"] == [0, 0, 0, 1, 1, 1]
    images, labels = to_tensors(ds, dataset_spec("cifar10"))
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 32, 32)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    from PIL import Image

    first = np.asarray(Image.open(root / "test" / "cat" / "0.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(images[0].numpy(), first)


def test_image_folder_missing_split_raises(image_root):
    root, _ = image_root
    with pytest.raises(DataError, match="train"):
        load_dataset("cifar10", "train", root=root)
