"""Images decoded on demand from a ``datasets.Dataset``, for splits too large to hold in memory (ImageNet).

``DecodedImages`` behaves like the uint8 N×C×H×W tensor of an in-memory split where the pipeline indexes it
(``len``, slices and index tensors give evaluation crops: resize the short side, centre crop), and
:meth:`take` gives training crops: Inception-style random-resized crops (scale 0.08–1, ratio 3/4–4/3) drawn from
the batch's generator, so a run stays deterministic and resumable. Decoding runs in a thread pool (PIL
releases the GIL while decoding).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import datasets
import numpy as np
import torch
from PIL import Image

from zoo.data.sources import column_arrays, decode_image


def random_resized_box(
    width: int, height: int, uniforms: torch.Tensor, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop covering ``scale`` of the area with aspect in ``ratio``.

    ``uniforms`` holds U(0,1) draws, four per attempt; after as many attempts as rows it falls back to a centre
    square, as torchvision does.
    """
    area = width * height
    for u in uniforms.tolist():
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1))
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


CROP_ATTEMPTS = 10


class DecodedImages:
    """A split's images, decoded per batch to ``size`` = (C, H, W) uint8."""

    def __init__(self, ds: datasets.Dataset, size: tuple[int, int, int], workers: int = 8) -> None:
        self.ds, self.size, self.workers = ds, tuple(size), workers
        self.labels = torch.as_tensor(column_arrays(ds, "label")[0].astype(np.int64))

    def __len__(self) -> int:
        return len(self.ds)

    def select(self, indices: torch.Tensor) -> DecodedImages:
        return DecodedImages(self.ds.select(indices.tolist()), self.size, self.workers)

    def _decode_all(self, indices: list[int], uniforms: torch.Tensor | None) -> torch.Tensor:
        mode = "L" if self.size[0] == 1 else "RGB"

        def one(k: int) -> np.ndarray:
            image = self.ds[indices[k]]["image"]
            if not isinstance(image, Image.Image):
                image = Image.fromarray(np.asarray(image, dtype=np.uint8))
            if uniforms is None:
                return decode_image(image, self.size)
            box = random_resized_box(image.width, image.height, uniforms[k])
            image = image.convert(mode).crop(box).resize(self.size[:0:-1], Image.BILINEAR)
            arr = np.asarray(image, dtype=np.uint8)
            return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

        with ThreadPoolExecutor(self.workers) as pool:
            arrays = list(pool.map(one, range(len(indices))))
        return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, *self.size, dtype=torch.uint8)

    def __getitem__(self, index: slice | torch.Tensor) -> torch.Tensor:
        """Evaluation crops (resize the short side, centre crop) of a slice or index tensor of the split."""
        indices = list(range(len(self)))[index] if isinstance(index, slice) else index.tolist()
        return self._decode_all(indices, None)

    def take(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training crops of the given images, their random boxes drawn from ``generator``."""
        uniforms = torch.rand(len(indices), CROP_ATTEMPTS, 4, generator=generator)
        return self._decode_all(indices.tolist(), uniforms)
