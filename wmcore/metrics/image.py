"""Image-level metrics: a "has watermark" score from a probability mask, AUROC and AP.

Pure numpy functions. The score is the mean of the top 0.1% probabilities (at
least 16 pixels): a whole mark lifts it, a single hot pixel does not.
"""

from __future__ import annotations

import numpy as np


def top_k_count(n_pixels: int, top_fraction: float = 0.001, min_pixels: int = 16) -> int:
    """How many top probabilities the has-watermark score averages for an image of n_pixels."""
    return min(n_pixels, max(min_pixels, int(n_pixels * top_fraction)))


class TopKMean:
    """Mean of the k largest values seen so far, fed in any number of pieces (row strips or one whole map).

    Only values that can still enter the top k are partitioned: once k are held, those above the
    smallest held one (an equal one leaves the mean unchanged); before that, in a piece of more than
    SUBSAMPLE * k values, those at least the k-th largest of every SUBSAMPLE-th value (at least k
    values reach it, so the top k are among them). A partition of a whole 512-row strip took ~16 ms,
    12% of a 1024x768 photo's `wm predict` on 2 cores.
    """

    SUBSAMPLE = 8

    def __init__(self, n_pixels: int, top_fraction: float = 0.001, min_pixels: int = 16) -> None:
        self.k = top_k_count(n_pixels, top_fraction, min_pixels)
        self._pool = np.empty(0, dtype=np.float32)

    def add(self, values: np.ndarray) -> None:
        flat = np.asarray(values).ravel().astype(np.float32, copy=False)
        if self.k == 0:
            return
        if self._pool.size >= self.k:
            flat = flat[flat > self._pool.min()]
        elif flat.size > self.SUBSAMPLE * self.k:
            sample = flat[:: self.SUBSAMPLE]  # strided view: np.partition copies it
            flat = flat[flat >= np.partition(sample, sample.size - self.k)[sample.size - self.k]]
        cand = np.concatenate([self._pool, flat])
        self._pool = np.partition(cand, cand.size - self.k)[cand.size - self.k :] if cand.size > self.k else cand

    def value(self) -> float:
        return float(self._pool.mean()) if self._pool.size else 0.0


def image_score(probs: np.ndarray, top_fraction: float = 0.001, min_pixels: int = 16) -> float:
    """Has-watermark score in [0, 1] of one (H, W) probability map: the mean of its top k values (`TopKMean`)."""
    flat = np.asarray(probs, dtype=np.float32).ravel()
    acc = TopKMean(flat.size, top_fraction, min_pixels)
    acc.add(flat)
    return acc.value()


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
