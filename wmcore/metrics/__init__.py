"""Metrics as pure functions shared by training, evaluation and benchmarks."""

from wmcore.metrics.image import (
    TopKMean,
    average_precision,
    best_image_threshold,
    decision_scores,
    image_score,
    roc_auc,
    top_k_count,
)
from wmcore.metrics.pixel import (
    best_threshold,
    confusion_counts,
    counts_at,
    counts_at_thresholds,
    gate_counts,
    mask_f1,
    median_split_f1,
    positive_fraction,
    precision_recall_curve,
    scores_from_counts,
    threshold_histograms,
    threshold_index,
)

__all__ = [
    "TopKMean",
    "average_precision",
    "best_image_threshold",
    "best_threshold",
    "confusion_counts",
    "counts_at",
    "counts_at_thresholds",
    "decision_scores",
    "gate_counts",
    "image_score",
    "mask_f1",
    "median_split_f1",
    "positive_fraction",
    "precision_recall_curve",
    "roc_auc",
    "scores_from_counts",
    "threshold_histograms",
    "threshold_index",
    "top_k_count",
]
