"""A resumable, data-parallel batch iterator over in-memory uint8 tensors.

The permutation of an epoch depends only on (seed, epoch) and the augmentation of a batch only on
(seed, epoch, batch index, rank), so a run resumed at batch k of an epoch sees exactly the batches an
uninterrupted run would have seen. Each of ``world_size`` processes takes its own slice of every global batch.
``images`` is the split's uint8 tensor, or :class:`DecodedImages` for splits decoded on demand.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from zoo.data.augment import BatchAugment
from zoo.data.decoded import DecodedImages


class BatchIterator:
    """Global batches of ``batch_size`` images, split across ``world_size`` ranks."""

    def __init__(
        self,
        images: torch.Tensor | DecodedImages,
        labels: torch.Tensor,
        batch_size: int,
        transform: BatchAugment,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {world_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.transform = batch_size, transform
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment, seed, drop_last
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.labels))
        return torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's (images, labels) for batches ``start_batch..`` of ``epoch``."""
        order = self._order(epoch)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            idx = idx[self.rank :: self.world_size]
            generator = None
            if self.augment:
                generator = torch.Generator().manual_seed(hash((self.seed, epoch, b, self.rank)) & 0x7FFF_FFFF)
            if isinstance(self.images, DecodedImages) and generator is not None:
                images = self.images.take(idx, generator)  # decoded-on-demand splits crop while decoding
            else:
                images = self.images[idx]
            yield self.transform(images, generator), self.labels[idx]
