"""Training outputs for people: history.json, train_summary.json, metrics.json, loss_curve.png, a summary table.

All files are written atomically into paths.train_dir; metrics.json holds the few summary figures
that experiments are compared on (METRICS_KEYS). history.json holds

    {"epochs": [{"epoch", "step", "train_loss", "val_loss", "val_f1", "val_f1_best",
                 "val_threshold", "val_iou", "lr", "images_per_s", "epoch_images", "epoch_step_s",
                 "seconds", "peak_mem_mb", "crop", "batch_size"}, ...],
     "steps":  [{"step", "loss", "lr", "images_per_s"}, ...]}

(val_* are null for epochs without validation; images_per_s is the run's steady rate so far, and
epoch_images / epoch_step_s the epoch's own images and step seconds: waits for data in, validation out).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from wmcore.runtime.atomic import write_bytes, write_json

HISTORY_FILE = "history.json"
SUMMARY_FILE = "train_summary.json"
METRICS_FILE = "metrics.json"  # the few figures `dvc exp show` compares (DVC's metrics file of the stage)
METRICS_KEYS = ("best_val_f1", "images_per_s", "mem_peak_mb", "seconds", "steps")
CURVE_FILE = "loss_curve.png"


def write_history(train_dir: Path, history: dict[str, list[dict[str, Any]]]) -> Path:
    path = Path(train_dir) / HISTORY_FILE
    write_json(path, history)
    return path


def write_summary(train_dir: Path, summary: dict[str, Any]) -> Path:
    path = Path(train_dir) / SUMMARY_FILE
    write_json(path, summary)
    return path


def write_metrics(train_dir: Path, summary: dict[str, Any]) -> Path:
    """metrics.json: METRICS_KEYS of the summary (train_summary.json keeps everything)."""
    path = Path(train_dir) / METRICS_FILE
    write_json(path, {key: summary.get(key) for key in METRICS_KEYS})
    return path


def plot_loss_curve(train_dir: Path, history: dict[str, list[dict[str, Any]]]) -> Path:
    """Left: train loss per logged step and val loss per epoch (x = optimizer step).
    Right: val F1@0.5 and best-threshold F1 per epoch. Saved as PNG (Agg backend, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps, epochs = history["steps"], [e for e in history["epochs"] if e.get("val_loss") is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    left.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1, label="train loss")
    left.plot([e["step"] for e in epochs], [e["val_loss"] for e in epochs], "o-", label="val loss")
    left.set(xlabel="optimizer step", ylabel="loss", title="loss")
    left.legend()
    right.plot([e["epoch"] for e in epochs], [e["val_f1"] for e in epochs], "o-", label="F1 @ 0.5")
    right.plot([e["epoch"] for e in epochs], [e["val_f1_best"] for e in epochs], "s--", label="F1 @ best threshold")
    right.set(xlabel="epoch", ylabel="pixel F1", ylim=(0, 1), title="validation")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = Path(train_dir) / CURVE_FILE
    write_bytes(path, buf.getvalue())
    return path


def summary_table(summary: dict[str, Any]) -> str:
    """A short two-column text table of the run summary, for the end of the console output."""
    rows = [
        ("stopped by", summary.get("stop_reason")),
        ("epochs / steps", f"{summary.get('epochs')} / {summary.get('steps')}"),
        ("best val F1 (epoch)", f"{summary.get('best_val_f1') or 0:.4f} ({summary.get('best_epoch')})"),
        ("images/s (steady)", f"{summary.get('images_per_s', 0):.2f}"),
        ("mean step", f"{summary.get('mean_step_s', 0):.3f} s"),
        ("memory mean / peak", f"{summary.get('mem_mean_mb', 0):.0f} / {summary.get('mem_peak_mb', 0):.0f} MiB"),
        ("skipped steps", summary.get("nonfinite_steps")),
        ("wall time", f"{summary.get('seconds', 0):.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
