"""Evaluation pictures: PR curves, training curves, and an overlay grid of test predictions.

Drawn with matplotlib's object-oriented `Figure` API, which renders PNG through the Agg
canvas without pyplot: no global figure state, safe in worker threads and headless runs.
Every PNG is written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from wmcore.runtime.atomic import atomic_open

TRUTH_RGB = np.array([40, 200, 60], np.float32)  # green: watermark pixels of the truth mask
PRED_RGB = np.array([230, 40, 40], np.float32)  # red: pixels predicted positive


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Render `fig` to PNG at `path` atomically; returns the path."""
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def plot_pr_curves(
    curves: dict[str, list[dict[str, float]]], operating_point: tuple[float, float, float] | None, path: str | Path
) -> Path:
    """Pixel precision-recall curves, one line per split.

    Args:
        curves: split name -> points [{"threshold", "precision", "recall"}] (from precision_recall_curve).
        operating_point: (threshold, precision, recall) of the calibrated threshold on test, or None.
        path: PNG to write.
    """
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    for split, points in curves.items():
        if points:
            ax.plot([p["recall"] for p in points], [p["precision"] for p in points], marker=".", label=split)
    if operating_point is not None:
        threshold, precision, recall = operating_point
        ax.plot([recall], [precision], "ko", label=f"test at threshold {threshold:.3f}")
    ax.set(xlabel="recall (watermark pixels)", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.set_title("Pixel precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return save_figure(fig, path)


def _series(rows: Any, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """(x, y) of the rows where both keys hold numbers (validation is not run every epoch)."""
    rows = rows if isinstance(rows, list) else []
    pairs = [
        (r[x_key], r[y_key])
        for r in rows
        if isinstance(r, dict) and isinstance(r.get(x_key), int | float) and isinstance(r.get(y_key), int | float)
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_training_curves(history: dict[str, Any], path: str | Path) -> Path | None:
    """Loss and validation F1/IoU from training's history.json; None (nothing written) without any curve.

    Args:
        history: {"epochs": [{"epoch", "train_loss", "val_loss", "val_f1", "val_iou", ...}],
                  "steps": [{"step", "loss", ...}]}; missing keys and non-numbers are left out.
            Without per-epoch losses the loss panel shows the logged step losses instead.
    """
    epochs, steps = history.get("epochs"), history.get("steps")
    loss = [("epoch", k, *_series(epochs, "epoch", k)) for k in ("train_loss", "val_loss")]
    if not any(x for _, _, x, _ in loss):
        loss = [("step", "train loss", *_series(steps, "step", "loss"))]
    scores = [("epoch", k, *_series(epochs, "epoch", k)) for k in ("val_f1", "val_iou")]
    if not any(x for _, _, x, _ in loss + scores):
        return None
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_score = fig.subplots(1, 2)
    for ax, lines, title in ((ax_loss, loss, "Loss"), (ax_score, scores, "Validation pixel F1 / IoU")):
        for _, label, x, y in lines:
            if x:
                ax.plot(x, y, marker=".", label=label)
        ax.set(xlabel=lines[0][0], title=title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    ax_score.set_ylim(0, 1)
    return save_figure(fig, path)


def pick_overlay_rows(image_f1: np.ndarray, n: int) -> list[int]:
    """Indices of the `n` images shown in the overlay grid: the worst half first, then a spread.

    The first ceil(n/2) rows are the lowest image F1 (the failures worth looking at); the rest
    are spaced evenly over the remaining images ranked by F1, so typical and best cases show too.
    Returns at most len(image_f1) distinct indices, worst first.
    """
    order = [int(i) for i in np.argsort(np.asarray(image_f1), kind="stable")]
    n = min(n, len(order))
    n_worst = (n + 1) // 2
    worst, rest = order[:n_worst], order[n_worst:]
    n_spread = n - n_worst
    if n_spread <= 0:
        return worst
    picks = np.linspace(0, len(rest) - 1, n_spread).round().astype(int)
    return worst + [rest[i] for i in picks]


@dataclass
class OverlayRow:
    """One row of the overlay grid (all arrays the same H x W)."""

    image: np.ndarray  # (H, W, 3) uint8
    truth: np.ndarray  # (H, W) bool
    probs: np.ndarray  # (H, W) float probabilities in [0, 1]
    threshold: float  # pixel threshold of the prediction column
    title: str


def tint(image: np.ndarray, where: np.ndarray, rgb: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """Image (H, W, 3) uint8 with pixels of `where` (H, W) blended towards colour `rgb`."""
    out = image.astype(np.float32)
    out[where] = out[where] * (1 - strength) + rgb * strength
    return out.clip(0, 255).astype(np.uint8)


def plot_overlays(rows: list[OverlayRow], path: str | Path) -> Path:
    """Grid of image | truth (green) | prediction (red, probability >= threshold), one row per image."""
    n = max(1, len(rows))
    fig = Figure(figsize=(9, 2.6 * n))
    axes = np.atleast_2d(fig.subplots(n, 3, squeeze=False))
    for ax_row, row in zip(axes, rows, strict=False):
        pictures = (row.image, tint(row.image, row.truth, TRUTH_RGB), tint(row.image, row.probs >= row.threshold, PRED_RGB))
        labels = (row.title, "truth", f"prediction (p >= {row.threshold:.3f})")
        for ax, picture, label in zip(ax_row, pictures, labels, strict=True):
            ax.imshow(picture)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=8)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no test images", ha="center", va="center")
        for ax in axes[0]:
            ax.set_axis_off()
    return save_figure(fig, path, dpi=90)
