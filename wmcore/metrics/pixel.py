"""Pixel metrics as pure functions: confusion counts first, scores from counts.

Shared by training validation, evaluation and the benchmarks, so every number
called "F1" in this project is computed the same way. Works on torch tensors
(on any device: counts accumulate where the data is) and returns tensors.
"""

from __future__ import annotations

import torch

EPS = 1e-9


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Counts (tp, fp, fn, tn) of boolean `pred` vs boolean `target`.

    Args:
        pred, target: bool (or 0/1) tensors of equal shape (N, ...) .
        per_image: False -> tensor (4,) summed over everything; True -> (N, 4), one row per image.
    Returns: int64 tensor of counts [tp, fp, fn, tn].
    """
    _check(pred, target)
    p, t = pred.bool(), target.bool()
    dims = tuple(range(1, p.dim())) if per_image else tuple(range(p.dim()))
    tp = (p & t).sum(dims)
    fp = (p & ~t).sum(dims)
    fn = (~p & t).sum(dims)
    tn = (~p & ~t).sum(dims)
    return torch.stack([tp, fp, fn, tn], dim=-1).long()


def scores_from_counts(counts: torch.Tensor, empty_is_perfect: bool = True) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 and IoU from counts (..., 4).

    With `empty_is_perfect`, an image with no watermark pixels and no predicted
    ones scores 1.0 (correctly clean) instead of the undefined 0/0.
    """
    tp, fp, fn = (counts[..., i].double() for i in range(3))
    precision = tp / (tp + fp).clamp_min(EPS)
    recall = tp / (tp + fn).clamp_min(EPS)
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(EPS)
    iou = tp / (tp + fp + fn).clamp_min(EPS)
    if empty_is_perfect:
        empty = (tp + fp + fn) == 0
        one = torch.ones_like(f1)
        precision, recall = torch.where(empty, one, precision), torch.where(empty, one, recall)
        f1, iou = torch.where(empty, one, f1), torch.where(empty, one, iou)
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou}


def threshold_histograms(probs: torch.Tensor, target: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Histograms of probabilities of watermark (row 0) and clean (row 1) pixels: (2, bins).

    Accumulating these over a split gives confusion counts at every threshold in one pass.
    """
    _check(probs, target)
    idx = (probs.detach().float().clamp(0, 1) * (bins - 1)).round().long().flatten()
    t = target.bool().flatten()
    out = torch.zeros(2, bins, dtype=torch.long, device=probs.device)
    out[0].index_add_(0, idx[t], torch.ones_like(idx[t]))
    out[1].index_add_(0, idx[~t], torch.ones_like(idx[~t]))
    return out


def counts_at_thresholds(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From (2, bins) histograms: thresholds (bins,) and counts (bins, 4) for `prob >= threshold`."""
    bins = hist.shape[1]
    pos, neg = hist[0].double(), hist[1].double()
    tp = pos.flip(0).cumsum(0).flip(0)  # pixels with bin >= k
    fp = neg.flip(0).cumsum(0).flip(0)
    fn = pos.sum() - tp
    tn = neg.sum() - fp
    thresholds = torch.arange(bins, dtype=torch.float64, device=hist.device) / (bins - 1)
    return thresholds, torch.stack([tp, fp, fn, tn], dim=-1)


def best_threshold(hist: torch.Tensor) -> tuple[float, float]:
    """Threshold maximising pixel F1 over the histogram's split; returns (threshold, f1)."""
    thresholds, counts = counts_at_thresholds(hist)
    f1 = scores_from_counts(counts, empty_is_perfect=False)["f1"]
    k = int(torch.argmax(f1))
    return float(thresholds[k]), float(f1[k])
