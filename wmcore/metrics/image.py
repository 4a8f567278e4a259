"""Image-level metrics: a "has watermark" score from a probability mask, AUROC and AP.

Pure numpy functions. The score is the mean of the top 0.1% probabilities (at
least 16 pixels): a whole mark lifts it, a single hot pixel does not.
"""

from __future__ import annotations

import numpy as np


def image_score(probs: np.ndarray, top_fraction: float = 0.001, min_pixels: int = 16) -> float:
    """Has-watermark score in [0, 1] of one (H, W) probability map."""
    flat = np.asarray(probs, dtype=np.float32).ravel()
    if flat.size == 0:
        return 0.0
    k = min(flat.size, max(min_pixels, int(flat.size * top_fraction)))
    return float(np.partition(flat, flat.size - k)[flat.size - k :].mean())


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when only one class is present."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties (Mann-Whitney U).
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (area under the step PR curve); NaN without positives."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y_sorted = y[order]
    tp = np.cumsum(y_sorted)
    precision = tp / np.arange(1, len(y) + 1)
    return float((precision * y_sorted).sum() / y.sum())
