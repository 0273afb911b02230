"""A local ``<folder>/<class>/<image>`` tree as a ``datasets.Dataset`` (the imagefolder layout)."""

from __future__ import annotations

import warnings
from pathlib import Path

import datasets
from PIL import Image, UnidentifiedImageError

from zoo.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError):
        return False


def load_image_folder(folder: Path, skip_unreadable: bool = False) -> datasets.Dataset:
    """Classes are the sorted sub-folder names (or their integer values when every name is a number).

    Unreadable images raise, or are skipped with a warning that counts them.
    """
    if not folder.is_dir():
        raise DataError(f"No image folder at '{folder}'. Expected the layout <root>/<split>/<class>/<image>.")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"'{folder}' has no class sub-folders. Expected <root>/<split>/<class>/<image>.")
    paths, labels, bad = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if _readable(path):
                paths.append(str(path))
                labels.append(label)
            else:
                bad.append(path)
    if bad and not skip_unreadable:
        raise DataError(
            f"{len(bad)} unreadable image(s) in '{folder}', e.g. '{bad[0]}'. Remove them or pass "
            "skip_unreadable=True to skip them."
        )
    if bad:
        warnings.warn(f"Skipped {len(bad)} unreadable image(s) in '{folder}'.", stacklevel=2)
    names = classes
    if all(c.isdigit() for c in classes):  # folders named by class index (e.g. ImageNet ids): keep the index
        labels = [int(classes[i]) for i in labels]
        names = [str(i) for i in range(max(labels, default=-1) + 1)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": paths, "label": labels}, features=features)
