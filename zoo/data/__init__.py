"""Datasets as Hugging Face ``datasets`` objects, plus the batched tensor pipeline that feeds training."""

from zoo.data.augment import BatchAugment
from zoo.data.decoded import DecodedImages
from zoo.data.loader import BatchIterator
from zoo.data.sources import DATASETS, DatasetSpec, dataset_spec, load_dataset, to_tensors

__all__ = [
    "BatchAugment",
    "BatchIterator",
    "DecodedImages",
    "DATASETS",
    "DatasetSpec",
    "dataset_spec",
    "load_dataset",
    "to_tensors",
]
