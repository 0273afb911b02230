"""ACP's layer-wise clustering: how many distinct channels a layer has, by DBSCAN on its feature maps."""

from __future__ import annotations

import numpy as np
import torch


def dbscan_width(features: torch.Tensor, eps: float, min_samples: int = 5) -> int:
    """Width = number of DBSCAN clusters + number of noise points, channels as points of ``features`` (C, D).

    Cosine distance, as ACP uses: channels whose maps point the same way are redundant. An all-zero map has no
    direction; it counts as noise (kept), so a dead layer is never pruned to nothing by accident.
    """
    points = features.detach().double().cpu().numpy()
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"features must be a non-empty (channels, dims) matrix, got shape {tuple(points.shape)}")
    norms = np.linalg.norm(points, axis=1)
    alive = norms > 0
    if not alive.any():
        return len(points)
    from sklearn.cluster import DBSCAN  # imported here: scikit-learn takes ~2 s to import, and only ACP needs it

    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit_predict(points[alive])
    clusters = len(set(labels[labels >= 0].tolist()))
    noise = int((labels < 0).sum()) + int((~alive).sum())
    return max(1, clusters + noise)
