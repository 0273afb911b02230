"""Splits decoded on demand (ImageNet-scale) match the in-memory pipeline and crop deterministically."""

from __future__ import annotations

import torch
from conftest import REPO_ROOT

from zoo.data import BatchAugment, BatchIterator, DecodedImages, dataset_spec, load_dataset, to_tensors
from zoo.data.decoded import random_resized_box

IMAGENET = REPO_ROOT / "tests" / "fixtures" / "foolbox" / "imagenet"
SPEC = dataset_spec("imagenet")


def _decoded() -> DecodedImages:
    return DecodedImages(load_dataset("imagenet", "train", IMAGENET), SPEC.input_size, workers=2)


def test_evaluation_crops_equal_the_in_memory_split() -> None:
    images = _decoded()
    in_memory, labels = to_tensors(load_dataset("imagenet", "train", IMAGENET), SPEC)
    assert len(images) == 20 and torch.equal(images.labels, labels)
    assert torch.equal(images[0:20], in_memory)
    assert torch.equal(images[torch.tensor([3, 1])], in_memory[[3, 1]])
    assert set(labels.tolist()) >= {243, 559}  # folders named by class index keep the ImageNet ids


def test_training_crops_are_deterministic_per_generator() -> None:
    images, idx = _decoded(), torch.tensor([0, 5, 7])
    a = images.take(idx, torch.Generator().manual_seed(1))
    b = images.take(idx, torch.Generator().manual_seed(1))
    c = images.take(idx, torch.Generator().manual_seed(2))
    assert a.shape == (3, 3, 224, 224) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_resized_box_respects_scale_ratio_and_bounds() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_box(500, 375, torch.rand(10, 4, generator=gen))
        assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
        area = (right - left) * (bottom - top) / (500 * 375)
        assert 0.07 <= area <= 1.0
    # No attempt fits (every draw asks for the full area at an extreme aspect): centre square fallback.
    assert random_resized_box(400, 300, torch.tensor([[1.0, 0.0, 0.5, 0.5]])) == (50, 0, 350, 300)


def test_batch_iterator_uses_training_crops_for_decoded_splits() -> None:
    images = _decoded()
    transform = BatchAugment(SPEC.mean, SPEC.std, hflip=False)
    train = BatchIterator(images, images.labels, 4, transform, shuffle=True, augment=True, seed=3)
    evaluation = BatchIterator(images, images.labels, 4, transform)
    x_train, y_train = next(train.epoch(0))
    x_eval, _ = next(evaluation.epoch(0))
    assert x_train.shape == x_eval.shape == (4, 3, 224, 224)
    again, _ = next(BatchIterator(images, images.labels, 4, transform, shuffle=True, augment=True, seed=3).epoch(0))
    assert torch.equal(x_train, again) and y_train.shape == (4,)
