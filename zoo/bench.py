"""Benchmarks that print ratios and rates measured in one run."""

from __future__ import annotations

import time
from typing import Any

import torch

from zoo.data import BatchAugment, BatchIterator, dataset_spec, load_dataset, to_tensors


def bench_data_pipeline(dataset: str = "fashion_mnist", batch_size: int = 128, batches: int = 200) -> dict[str, Any]:
    """Augmented training images per second delivered by the in-memory batched pipeline (after loading)."""
    spec = dataset_spec(dataset)
    images, labels = to_tensors(load_dataset(spec.name, "train"), spec)
    transform = BatchAugment(spec.mean, spec.std, crop_padding=2, hflip=True)
    loader = BatchIterator(images, labels, batch_size, transform, shuffle=True, augment=True, drop_last=True)
    seen, epoch = 0, 0
    start = time.perf_counter()
    while seen < batches * batch_size:
        for x, _ in loader.epoch(epoch):
            seen += len(x)
            if seen >= batches * batch_size:
                break
        epoch += 1
    elapsed = time.perf_counter() - start
    return {
        "dataset": spec.name,
        "batch_size": batch_size,
        "images": seen,
        "seconds": round(elapsed, 3),
        "images_per_s": seen / elapsed,
        "threads": torch.get_num_threads(),
    }
