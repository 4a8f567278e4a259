"""Run reports: collect the steps' result files, name their tracked metrics, render a console table or markdown.

Tracked metric names are grouped by `/` so MLflow's charts section by group: `prepare/...`,
`train/...`, `val/...`, `test/...`, `real_test/...`, `predict/...`, `system/...`. The pipeline's
parent run carries HEADLINE_METRICS, the figures people compare across runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from wmcore.config import Params


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when the file is missing or unreadable (a step that did not run)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_step_results(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    """The result files of a pipeline run: training summary, evaluation metrics, prediction summary."""
    p = params.paths
    return {
        "train": read_json(root / p.train_dir / "train_summary.json"),
        "evaluate": read_json(root / p.evaluate_dir / "metrics.json"),
        "predict": read_json(root / p.predict_dir / "summary.json"),
    }


# The pipeline's headline: (tracked name, where it comes from in the step results, what it is).
HEADLINE_METRICS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("test/f1", ("evaluate", "test", "f1"), "pixel F1 of the exported model on the synthetic test split"),
    ("test_heldout/f1", ("evaluate", "test_heldout", "f1"), "the same on fonts, styles and backgrounds never trained on"),
    ("real_test/fp_area", ("evaluate", "real_test", "fp_area"), "share of real clean test photos' pixels marked"),
    ("train/images_per_s", ("train", "images_per_s"), "training throughput, steady state"),
    ("predict/images_per_s", ("predict", "images_per_s"), "batch inference throughput"),
)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _grouped(group: str, values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    numbers = {f"{group}/{k}": _finite(values.get(k)) for k in keys}
    return {k: v for k, v in numbers.items() if v is not None}


def prepare_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """`prepare/...` metrics of stats.json: samples per split, time, backgrounds skipped."""
    counts = {f"n_{split}": n for split, n in (stats.get("counts") or {}).items()}
    timings = stats.get("timings_s") or {}
    values = {**counts, "seconds": timings.get("total"), "ms_per_sample": timings.get("per_sample_ms"),
              "resumed": stats.get("resumed"), "mean_wm_fraction": stats.get("mean_wm_fraction"),
              "backgrounds_skipped": (stats.get("backgrounds_skipped") or {}).get("count")}  # fmt: skip
    return _grouped("prepare", values, tuple(values))


def predict_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """`predict/...` and `system/...` metrics of a `wm predict` summary.json."""
    keys = ("processed", "skipped", "failed", "up_to_date", "with_watermark", "images_per_s", "seconds",
            "batch_size_final", "threshold", "image_threshold")  # fmt: skip
    return {**_grouped("predict", summary, keys), **_grouped("system", summary, ("peak_rss_mb",))}


def headline_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The parent run's metrics: HEADLINE_METRICS plus `system/peak_mem_mb`, the largest peak of training
    (train_summary.json mem_peak_mb) and prediction (summary.json peak_rss_mb). Missing figures are left out."""
    out: dict[str, float] = {}
    for name, path, _ in HEADLINE_METRICS:
        value: Any = results
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if (number := _finite(value)) is not None:
            out[name] = number
    peaks = [_finite(results.get("train", {}).get("mem_peak_mb")), _finite(results.get("predict", {}).get("peak_rss_mb"))]
    if any(p is not None for p in peaks):
        out["system/peak_mem_mb"] = max(p for p in peaks if p is not None)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_rows(results: dict[str, Any], timings: dict[str, float], extra: dict[str, str]) -> list[tuple[str, str]]:
    """(name, value) rows: key metrics, performance, stage timings and where things are."""
    rows: list[tuple[str, str]] = []
    evaluate = results.get("evaluate", {})
    for split in ("test", "test_heldout"):
        block = evaluate.get(split, {})
        for key in ("f1", "precision", "recall", "iou", "auroc", "ap", "clean_fp_area", "clean_page_fp_area"):
            if block.get(key) is not None:
                rows.append((f"{split} {key}", _fmt(block[key])))
    real = evaluate.get("real_test", {})
    for key in ("fp_area", "flagged_share"):  # marked share of real clean photos' pixels; photos with any mark
        if real.get(key) is not None:
            rows.append((f"real_test {key}", _fmt(real[key])))
    promotion = evaluate.get("promotion")
    if promotion:  # which model evaluate exported: the fresh one only when it beat the shipped one on test
        rows.append(("exported model", f"{promotion['promoted']} (test F1 fresh {_fmt(promotion['candidate_test_f1'])}"
                     f" vs shipped {_fmt(promotion['pretrained_test_f1'])})"))  # fmt: skip
    train = results.get("train", {})
    for key in ("best_val_f1", "epochs", "steps", "images_per_s", "mem_peak_mb", "seconds"):
        if key in train:
            rows.append((f"train {key}", _fmt(train[key])))
    pred = results.get("predict", {})
    for key in ("processed", "skipped", "images_per_s"):
        if key in pred:
            rows.append((f"predict {key}", _fmt(pred[key])))
    rows += [(f"time {stage} (s)", f"{sec:.1f}") for stage, sec in timings.items()]
    rows += list(extra.items())
    return rows


def console_table(rows: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=10)
    line = "-" * (width + 3 + max((len(v) for _, v in rows), default=10))
    return "\n".join([line, *(f"{k.ljust(width)} | {v}" for k, v in rows), line])


def markdown_table(rows: list[tuple[str, str]], title: str) -> str:
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"# {title}\n\n| item | value |\n|---|---|\n{body}\n"
