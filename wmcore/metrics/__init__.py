"""Metrics as pure functions shared by training, evaluation and benchmarks."""

from wmcore.metrics.image import average_precision, image_score, roc_auc
from wmcore.metrics.pixel import (
    best_threshold,
    confusion_counts,
    counts_at_thresholds,
    scores_from_counts,
    threshold_histograms,
)

__all__ = [
    "average_precision",
    "best_threshold",
    "confusion_counts",
    "counts_at_thresholds",
    "image_score",
    "roc_auc",
    "scores_from_counts",
    "threshold_histograms",
]
