"""Top-1/top-5 accuracy: of a model on a labelled split held in memory, and of a checkpoint on its test split."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.api import from_pretrained
from zoo.data import dataset_spec, load_dataset, to_tensors
from zoo.data.augment import normalize
from zoo.hub import resolve_source
from zoo.inference import to_inference


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images_u8: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """Logits for every image, in order (eval mode, batched)."""
    model.eval()
    device = next(model.parameters()).device
    chunks = range(0, len(images_u8), batch_size)
    outs = [
        model(normalize(images_u8[i : i + batch_size].to(device), mean, std)).float().cpu()
        for i in tqdm(chunks, desc="eval", disable=not progress, unit="batch")
    ]
    return torch.cat(outs) if outs else torch.zeros(0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent, plus the sample count."""
    n = len(labels)
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top5 == labels[:, None]
    return {
        "top1": 100.0 * hits[:, 0].sum().item() / n,
        "top5": 100.0 * hits.any(dim=1).sum().item() / n,
        "num_samples": n,
    }


def evaluate_checkpoint(
    source: str, dataset: str | None, limit: int | None, progress: bool, packed: bool = False
) -> dict[str, Any]:
    """Load a checkpoint and measure top-1/top-5 on a test split (``packed``: through ``to_inference``)."""
    model = from_pretrained(source)
    if packed:
        model = to_inference(model)
    cfg = model.pretrained_cfg
    spec = dataset_spec(dataset or resolve_source(source).config["zoo"]["metrics"]["dataset"])
    images, labels = to_tensors(load_dataset(spec.name, "test"), spec, limit=limit)
    logits = predict_logits(model, images, tuple(cfg["mean"]), tuple(cfg["std"]), progress=progress)
    return {"id": source, "dataset": spec.name, "split": "test", **accuracy(logits, labels)}
