"""Run reports: collect the steps' result files and render them as a console table or markdown."""

from __future__ import annotations

import json
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
