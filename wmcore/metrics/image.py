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


def decision_scores(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Has-watermark decisions `score >= threshold` against boolean labels, one value per image.

    Returns accuracy, balanced_accuracy (mean of the recalls of both classes; a class with no
    image is left out of the mean), precision, recall and f1 of the "has watermark" class
    (precision is 1.0 and f1 0.0 when nothing is called positive).
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pred = s >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    class_recalls = [tp / (tp + fn)] if tp + fn else []
    class_recalls += [tn / (tn + fp)] if tn + fp else []
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return {
        "accuracy": (tp + tn) / max(1, len(y)),
        "balanced_accuracy": float(np.mean(class_recalls)) if class_recalls else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
    }


def best_image_threshold(
    scores: np.ndarray, labels: np.ndarray, objective: str = "balanced_accuracy"
) -> tuple[float, float]:
    """Image score threshold maximising `objective` ("balanced_accuracy" or "f1") on one split.

    Candidates are the midpoints between neighbouring distinct scores, plus one below the lowest
    and one above the highest: a midpoint keeps the margin to both classes, so the decision on
    unseen images is not decided by one training score. Ties go to the lowest threshold.
    Returns (threshold, objective value); (0.5, nan) for an empty split.
    """
    s = np.unique(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        return 0.5, float("nan")
    candidates = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    values = [decision_scores(scores, labels, float(t))[objective] for t in candidates]
    k = int(np.nanargmax(values)) if not np.all(np.isnan(values)) else 0
    return float(candidates[k]), float(values[k])
