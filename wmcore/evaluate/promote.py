"""Promotion and export: which evaluated model `wm evaluate` ships, and the deployable weights file.

One rule decides (`wmcore.metrics.promotion`, applied in `promotion_record`): a freshly trained
candidate replaces the pretrained (shipped) model only when its test pixel F1 is higher and its
held-out F1 no lower and real-photo false-positive area no higher, both scored on the same prepared
splits with their own calibration. The MLflow champion alias applies the same rule
(wmcore.tracking.mlflow_run.promote_if_better), so the exported file and the registry never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wmcore.data.layout import HELDOUT_SPLIT
from wmcore.metrics.promotion import Scores, why_not
from wmcore.model.checkpoint import checkpoint_dict, load_model, save_checkpoint


def promotion_record(
    candidate: dict[str, Any], pretrained: dict[str, Any], source: Path, pretrained_path: Path
) -> dict[str, Any]:
    """Which model `wm evaluate` exports: the candidate only when it beats the pretrained one (module docstring).

    Both models' scores are kept (test, test_heldout and the real-photo false-positive area), so the
    record says what the loser reached too, and `reason` why the candidate lost (None when it won).
    """
    cand_f1 = candidate["test"]["f1"] or 0.0
    pre_f1 = pretrained["test"]["f1"] or 0.0
    reason = why_not(Scores.of(candidate), Scores.of(pretrained))
    return {
        "promoted": "candidate" if reason is None else "pretrained",
        "reason": reason,
        "candidate": str(source),
        "pretrained": str(pretrained_path),
        "candidate_test_f1": cand_f1,
        "pretrained_test_f1": pre_f1,
        "candidate_test_heldout_f1": candidate.get(HELDOUT_SPLIT, {}).get("f1"),
        "pretrained_test_heldout_f1": pretrained.get(HELDOUT_SPLIT, {}).get("f1"),
        "candidate_real_test_fp_area": candidate.get("real_test", {}).get("fp_area"),
        "pretrained_real_test_fp_area": pretrained.get("real_test", {}).get("fp_area"),
    }


def export_model(source: Path, path: Path, metrics: dict[str, Any], backend: str) -> Path:
    """Write the deployable weights: {model, model_args, meta} with the calibrated thresholds and fusion rule.

    Only plain values go into `meta`, so the file loads with torch.load(weights_only=True).
    """
    model, ckpt = load_model(source)
    test = metrics["test"]
    meta = {
        "threshold": test["threshold"],
        "image_threshold": test["image_threshold"],
        "fusion": metrics["fusion"]["rule"],  # read by predict.fusion "auto"
        "fusion_global_side": metrics["fusion"]["global_side"],
        "enlarge_below": metrics.get("enlarge_below", 0),  # predict.enlarge_below the thresholds hold for
        "test_f1": test["f1"],
        "test_iou": test["iou"],
        "test_auroc": test["auroc"],
        "test_heldout_f1": metrics.get(HELDOUT_SPLIT, {}).get("f1"),
        "real_test_fp_area": metrics.get("real_test", {}).get("fp_area"),
        "real_test_flagged_share": metrics.get("real_test", {}).get("flagged_share"),
        "backend_evaluated": backend,
        "source_checkpoint": str(source),
        "source_epoch": ckpt.get("epoch"),
        "source_step": ckpt.get("step"),
        "kept_out": ckpt.get("meta", {}).get("kept_out"),  # what its training never drew (wmcore.data.kept_out)
    }
    save_checkpoint(path, checkpoint_dict(model, meta))
    return path
