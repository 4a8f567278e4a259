"""Pixel metrics as pure functions: confusion counts first, scores from counts.

Shared by training validation, evaluation and the benchmarks, so every number
called "F1" in this project is computed the same way. Works on torch tensors
(on any device: counts accumulate where the data is) and returns tensors; `mask_f1` and
`median_split_f1` take numpy masks and maps (benchmarks and `wm tune` compare backends with them).
"""

from __future__ import annotations

import numpy as np
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

    Bin k holds probabilities in [k/(bins-1), (k+1)/(bins-1)) (bin bins-1 holds exactly 1.0), so
    "bin >= k" is exactly "prob >= k/(bins-1)": the counts of `counts_at_thresholds` are those of
    thresholding at the grid values, not an approximation. Accumulating these over a split gives
    confusion counts at every grid threshold in one pass.
    """
    _check(probs, target)
    idx = (probs.detach().double().clamp(0, 1) * (bins - 1)).floor().long().flatten()
    t = target.bool().flatten()
    out = torch.zeros(2, bins, dtype=torch.long, device=probs.device)
    out[0].index_add_(0, idx[t], torch.ones_like(idx[t]))
    out[1].index_add_(0, idx[~t], torch.ones_like(idx[~t]))
    return out


def counts_at_thresholds(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Confusion counts at every grid threshold, for `prob >= threshold`.

    Args:
        hist: (..., 2, bins) histograms from `threshold_histograms` (leading dims e.g. one per image).
    Returns: thresholds (bins,) = k/(bins-1), and counts (..., bins, 4) as [tp, fp, fn, tn].
    """
    bins = hist.shape[-1]
    pos, neg = hist[..., 0, :].double(), hist[..., 1, :].double()
    tp = pos.flip(-1).cumsum(-1).flip(-1)  # pixels with bin >= k
    fp = neg.flip(-1).cumsum(-1).flip(-1)
    fn = pos.sum(-1, keepdim=True) - tp
    tn = neg.sum(-1, keepdim=True) - fp
    thresholds = torch.arange(bins, dtype=torch.float64, device=hist.device) / (bins - 1)
    return thresholds, torch.stack([tp, fp, fn, tn], dim=-1)


def threshold_index(threshold: float, bins: int) -> int:
    """Index k of the grid threshold k/(bins-1) nearest to `threshold` (0..bins-1)."""
    return int(min(bins - 1, max(0, round(float(threshold) * (bins - 1)))))


def counts_at(hist: torch.Tensor, threshold: float) -> torch.Tensor:
    """Counts (..., 4) at the grid threshold nearest `threshold`, from (..., 2, bins) histograms."""
    _, counts = counts_at_thresholds(hist)
    return counts[..., threshold_index(threshold, hist.shape[-1]), :]


def best_threshold(hist: torch.Tensor, interior: bool = False) -> tuple[float, float]:
    """Threshold maximising pixel F1 over the (2, bins) histogram of a split; returns (threshold, f1).

    With `interior`, the ends 0.0 (everything is watermark) and 1.0 (almost nothing is) are not
    candidates: a deployable threshold lies strictly between. Ties go to the lowest threshold.
    Without any watermark pixel F1 is 0 everywhere and the answer is meaningless: callers check
    `hist[0].sum() > 0` first.
    """
    thresholds, counts = counts_at_thresholds(hist)
    f1 = scores_from_counts(counts, empty_is_perfect=False)["f1"]
    if interior and len(f1) > 2:
        f1 = f1.clone()
        f1[0] = f1[-1] = -1.0
    k = int(torch.argmax(f1))
    return float(thresholds[k]), float(f1[k])


def precision_recall_curve(hist: torch.Tensor) -> list[dict[str, float]]:
    """PR curve of a split from its (2, bins) histogram, one point per grid threshold.

    Returns: [{"threshold", "precision", "recall"}] by rising threshold; thresholds at which
    nothing is predicted positive (precision undefined) are left out.
    """
    thresholds, counts = counts_at_thresholds(hist)
    scores = scores_from_counts(counts, empty_is_perfect=False)
    predicted = counts[:, 0] + counts[:, 1]
    return [
        {"threshold": round(float(t), 6), "precision": round(float(p), 6), "recall": round(float(r), 6)}
        for t, p, r, n in zip(thresholds, scores["precision"], scores["recall"], predicted, strict=True)
        if n > 0
    ]


def positive_fraction(counts: torch.Tensor) -> torch.Tensor:
    """Share of pixels predicted positive, (tp + fp) / all, from counts (..., 4); 0 for no pixels."""
    total = counts.sum(-1).double()
    return (counts[..., 0] + counts[..., 1]).double() / total.clamp_min(1)


def gate_counts(counts: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Counts (N, ..., 4) after emptying the masks of the images where `keep` (N,) is False.

    An image called clean by the has-watermark gate predicts nothing: its tp become fn and its fp
    become tn. `keep` True leaves an image's counts as they are.
    """
    k = keep.to(counts.dtype).reshape(-1, *([1] * (counts.dim() - 2)))
    tp, fp, fn, tn = counts.unbind(-1)
    return torch.stack([tp * k, fp * k, fn + tp * (1 - k), tn + fp * (1 - k)], dim=-1)


def mask_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """F1 of two boolean numpy masks of any equal shape; 1.0 when both are empty (as `scores_from_counts`)."""
    tp = float(np.logical_and(pred, truth).sum())
    denom = float(pred.sum()) + float(truth.sum())
    return 1.0 if denom == 0 else 2.0 * tp / denom


def median_split_f1(probs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """F1 of `probs` vs `reference` maps, both cut at the reference maps' median: a 50/50 split where any
    rounding shows, so two backends of one model (or an untrained one) still compare strictly. 1.0 = same."""
    cut = float(np.median(np.concatenate([r.ravel() for r in reference])))
    pred = np.concatenate([(p >= cut).ravel() for p in probs])
    ref = np.concatenate([(r >= cut).ravel() for r in reference])
    return mask_f1(pred, ref)
