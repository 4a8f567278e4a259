"""`wm evaluate`: metrics, curves and overlays on the test split; the better model is exported."""

from __future__ import annotations

import argparse
from pathlib import Path

from wmcore.commands.common import load, output_folder, print_result
from wmcore.evaluate.report import summary_table
from wmcore.evaluate.run import evaluate_tracked


def run(args: argparse.Namespace) -> int:
    params = load(args)
    output_folder(args, params.paths.evaluate_dir, "paths.evaluate_dir")
    metrics = evaluate_tracked(params, backend=args.backend, checkpoint=args.model)
    lines = [summary_table(metrics)]
    if promotion := metrics.get("promotion"):
        lines.append(f"exported: {promotion['promoted']} ({Path(metrics['source']).name}); test F1 "
                     f"{Path(promotion['candidate']).name} {promotion['candidate_test_f1']:.4f}, "
                     f"{Path(promotion['pretrained']).name} {promotion['pretrained_test_f1']:.4f}")  # fmt: skip
    if params.tracking.enabled and params.tracking.log_model:
        lines.append(f"MLflow champion: {'this model' if metrics.get('champion') else 'unchanged'}")
    where = f"-> {params.paths.evaluate_dir}/ (model.pt, metrics.json, scores.json, pr_curve.png, overlays.png)"
    print_result(args, "\n".join(lines), where, metrics.get("test", metrics))
    return 0
