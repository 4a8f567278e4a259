"""Calibrating the fusion rule of working-scale inference (global view + native tiles) on validation.

`wm evaluate` runs each validation image once through the native path and once through the
global view (wmcore.infer.working_scale), so every rule of FUSION_RULES is scored from the same
two maps: `rule_maps` turns them into one probability map per rule. `choose_rule` then takes the
rule with the best pixel F1, each rule at its own best threshold. Only images whose long side
exceeds predict.global_side can tell the rules apart (the others are their own global view);
when there are none, or no watermark pixel to score, the rules tie and the fallback rule (refine)
is kept, with the reason in the log and in metrics.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wmcore.infer.working_scale import FALLBACK_RULE, FUSION_RULES, REFINE_RULES, fuse
from wmcore.metrics import best_threshold

log = logging.getLogger(__name__)

# Order in which equal F1 scores are resolved: the fallback first, then the cheaper passes.
TIE_ORDER = (FALLBACK_RULE, *(r for r in ("global", "refine_mean", "tiles", "mean", "max") if r != FALLBACK_RULE))


def rule_maps(
    native: np.ndarray, global_probs: np.ndarray | None, refined: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """{rule: float32 (H, W)} for every rule of FUSION_RULES from the passes of one image.

    global_probs None (the image fits global_side): every rule is the native map itself.
    refined: {rule of REFINE_RULES: its map} (the working map fused with native windows where they ran);
    None, or a rule missing from it, = the working map (no window ran).
    """
    if global_probs is None:
        return dict.fromkeys(FUSION_RULES, native)
    maps = {rule: fuse(native, global_probs, rule) for rule in FUSION_RULES if rule not in REFINE_RULES}
    maps.update({rule: (refined or {}).get(rule, global_probs) for rule in REFINE_RULES})
    return maps


@dataclass
class FusionChoice:
    """The calibrated rule and the evidence for it.

    rule: chosen rule (one of FUSION_RULES); global_side: predict.global_side it was chosen with, px;
    f1, threshold: per rule, its best validation pixel F1 and the threshold reaching it (None when
    validation has no watermark pixel); n_images: scored validation images; n_larger: those larger
    than global_side (the only ones where rules differ); reason: why this rule, in words; calibrated:
    each rule's thresholds and real-photo figures when the rule was chosen under the real-photo budgets
    (wmcore.evaluate.calibrate.calibrate_rule_and_thresholds), else empty.
    """

    rule: str
    global_side: int
    n_images: int
    n_larger: int
    reason: str
    f1: dict[str, float | None] = field(default_factory=dict)
    threshold: dict[str, float | None] = field(default_factory=dict)
    calibrated: dict[str, dict] = field(default_factory=dict)  # rule -> its calibration under the real budgets

    def as_metrics(self) -> dict[str, Any]:
        """The `fusion` entry of metrics.json."""
        return {
            "rule": self.rule,
            "val_f1": {r: _rounded(v) for r, v in self.f1.items()},
            "val_threshold": {r: _rounded(v) for r, v in self.threshold.items()},
            "global_side": self.global_side,
            "n_images": self.n_images,
            "n_larger_than_global_side": self.n_larger,
            "reason": self.reason,
            **({"calibrated": self.calibrated} if self.calibrated else {}),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def choose_rule(
    totals: dict[str, torch.Tensor], n_images: int, n_larger: int, global_side: int, min_gain: float = 0.0
) -> FusionChoice:
    """Pick the rule with the best validation pixel F1 (each at its best interior threshold).

    Args:
        totals: {rule: (2, bins) threshold histogram summed over the validation images}.
        n_images, n_larger: validation images scored, and those whose long side exceeds global_side.
        global_side: predict.global_side, px (0 = no global view).
        min_gain: F1 within this of the best counts as a tie (evaluate.fusion_min_gain): a few
            validation images cannot tell 0.1535 from 0.1534, so no rule wins on noise.
    Ties go to the first rule of TIE_ORDER present in `totals` (the fallback, refine).
    """
    fallback = FALLBACK_RULE if FALLBACK_RULE in totals else next(r for r in TIE_ORDER if r in totals)
    choice = FusionChoice(fallback, global_side, n_images, n_larger, "")
    if not all(int(h[0].sum()) > 0 for h in totals.values()):
        choice.reason = f"validation has no watermark pixel: rules not compared, {fallback} kept"
        choice.f1, choice.threshold = dict.fromkeys(totals), dict.fromkeys(totals)
        return choice
    for rule, hist in totals.items():
        choice.threshold[rule], choice.f1[rule] = best_threshold(hist, interior=True)
    if global_side == 0:
        choice.reason = f"predict.global_side is 0 (no global view): every rule is the native pass, {fallback} kept"
        return choice
    if n_larger == 0:
        choice.reason = (
            f"no validation image is larger than global_side={global_side} px: every rule is the same "
            f"single pass (tie), {fallback} kept"
        )
        return choice
    best = max(choice.f1[r] or 0.0 for r in TIE_ORDER if r in choice.f1)
    tied = [r for r in TIE_ORDER if r in choice.f1 and (choice.f1[r] or 0.0) >= best - min_gain]
    choice.rule = tied[0]
    choice.reason = (
        f"validation pixel F1 {choice.f1[choice.rule]:.4f} (best {best:.4f}) on {n_larger} of {n_images} "
        f"images larger than global_side"
    )
    if len(tied) > 1:
        choice.reason += f"; tied within {min_gain:g} with {', '.join(tied[1:])}"
    return choice
