"""Calibration on validation: the fusion rule, then the pixel and has-watermark thresholds.

The fusion rule (wmcore.evaluate.fusion) is chosen on the synthetic val split, and, when the real
clean val photos include pictures larger than the working side (native views), with its thresholds
under the real-photo budgets (`calibrate_rule_and_thresholds`). The thresholds
are then chosen together (`evaluate.image_objective` "pixel_f1"): `wm predict` empties the mask of
an image whose has-watermark score is below the image threshold (predict.gate_masks), so the
pair (pixel threshold, image threshold) decides both the pixel F1 of marked images and how much
of a clean photo gets marked. Every pair of grid pixel thresholds x candidate image thresholds is
scored at once from the per-image histograms: synthetic val pixel F1 of the gated masks, and on
the corpus's real clean val photos the gated false-positive area and the share of photos that get
any mask. The pair with the best F1 within the real-photo budgets (evaluate.max_real_fp_area,
max_real_flagged) wins, where pairs within evaluate.f1_tolerance of the best F1 count as tied and
the tie goes to the least real false-positive area (a gain of 1e-5 val F1 is noise, marking 50% more
of real photos is not); when no pair meets the budgets, the one with the least real false-positive
area. Only validation data is used: the test splits never influence a threshold.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from wmcore.config import Params
from wmcore.evaluate.fusion import TIE_ORDER, FusionChoice, choose_rule
from wmcore.evaluate.score import SplitScores
from wmcore.infer.working_scale import resolve_rule
from wmcore.metrics import (
    best_image_threshold,
    best_threshold,
    counts_at_thresholds,
    decision_scores,
    scores_from_counts,
)

log = logging.getLogger(__name__)

MAX_IMAGE_CANDIDATES = 4096  # image thresholds tried (score quantiles beyond this many distinct scores)
SCORE_DECIMALS = 6  # scores are told apart at the precision metrics.json reports them


def calibrate_fusion(val_by_rule: dict[str, SplitScores], params: Params) -> tuple[FusionChoice, str]:
    """(calibrated fusion choice, rule `wm predict` applies with these params) from the val scores per rule.

    The rule is chosen among evaluate.fusion_rules. The applied rule is predict.fusion unless that
    is "auto" (then the chosen one); with predict.global_side 0 it is "tiles". The choice is logged
    with its reason.
    """
    bins, global_side = params.evaluate.threshold_grid, params.predict.global_side
    any_split = next(iter(val_by_rule.values()))
    n_larger = sum(max(size) > global_side for size in any_split.sizes) if global_side else 0
    allowed = params.evaluate.fusion_rules
    totals = {rule: split.stacked_hists(bins).sum(0) for rule, split in val_by_rule.items() if rule in allowed}
    choice = choose_rule(totals, len(any_split.samples), n_larger, global_side, params.evaluate.fusion_min_gain)
    applied = resolve_rule(params.predict.fusion, choice.rule, global_side)
    f1 = ", ".join(f"{r} {'-' if v is None else format(v, '.4f')}" for r, v in choice.f1.items())
    log.info("fusion rule %s (%s); val F1 per rule: %s; applied: %s", choice.rule, choice.reason, f1, applied)
    return choice, applied


def calibrate_rule_and_thresholds(
    val_by_rule: dict[str, SplitScores], real_by_rule: dict[str, SplitScores] | None, params: Params
) -> tuple[FusionChoice, str, Calibration]:
    """(fusion choice, applied rule, thresholds) with the real clean val photos in view of the rule too.

    `calibrate_fusion` compares the rules on synthetic val F1 alone. When the real clean val photos
    hold pictures larger than the working side (the native views, refined as a user's photo is), the
    rules also differ in what they mark there: each rule of evaluate.fusion_rules is then calibrated
    (`calibrate`) with its own real-photo scores, and the rule with the best val F1 within the budgets
    wins, rules within evaluate.fusion_min_gain of it tied in favour of the fallback order (refine,
    global, refine_mean, ...); when none meets the budgets, the one marking the least real area.
    Otherwise (no such real photo, predict.fusion fixed, no real photos) the rule is calibrate_fusion's.
    real_by_rule: {rule: scores of the real clean val photos under it}, or None without them.
    """
    choice, applied = calibrate_fusion(val_by_rule, params)
    global_side = params.predict.global_side
    real_larger = bool(real_by_rule) and global_side > 0 and any(
        max(size) > global_side for size in next(iter(real_by_rule.values())).sizes)  # fmt: skip
    rules = [r for r in TIE_ORDER if r in params.evaluate.fusion_rules and r in val_by_rule]
    if not real_larger or params.predict.fusion != "auto" or params.evaluate.image_objective != "pixel_f1" or (
        len(rules) < 2 or choice.n_larger == 0
    ):
        real = real_by_rule.get(applied) if real_by_rule else None
        return choice, applied, calibrate(val_by_rule[applied], real, params)
    assert real_by_rule is not None
    cals = {r: calibrate(val_by_rule[r], real_by_rule[r], params) for r in rules}
    within = [r for r in rules if cals[r].within_budget]
    if within:
        best = max(cals[r].val_f1 or 0.0 for r in within)
        rule = next(r for r in within if (cals[r].val_f1 or 0.0) >= best - params.evaluate.fusion_min_gain)
        why = f"best val F1 within the real-photo budgets (ties within {params.evaluate.fusion_min_gain:g} to {TIE_ORDER[0]})"
    else:
        rule = min(rules, key=lambda r: (cals[r].real_fp_area or 0.0, rules.index(r)))
        why = "no rule meets the real-photo budgets: the least real false-positive area"
    figures = "; ".join(f"{r} F1 {cals[r].val_f1 or 0.0:.4f}, real fp {100 * (cals[r].real_fp_area or 0.0):.3f}% / "
                        f"{100 * (cals[r].real_flagged or 0.0):.1f}% flagged" for r in rules)  # fmt: skip
    choice.rule = rule
    choice.reason = f"{why}, with the real clean val photos (some larger than global_side) in view: {figures}"
    choice.calibrated = {r: cals[r].as_metrics() for r in rules}
    log.info("fusion rule %s: %s", rule, choice.reason)
    return choice, rule, cals[rule]


@dataclass
class Calibration:
    """The chosen thresholds and what they gave on validation (the `calibration` entry of metrics.json).

    threshold: pixel threshold; image_threshold: has-watermark score threshold (the mask gate);
    objective: evaluate.image_objective; val_f1: synthetic val pixel F1 (gated when the gate is on);
    real_fp_area / real_flagged: on the real clean val photos (None without them); within_budget:
    both real-photo budgets met; reason: why, in words.
    """

    threshold: float
    image_threshold: float
    objective: str
    val_f1: float | None
    real_fp_area: float | None
    real_flagged: float | None
    within_budget: bool
    reason: str

    def as_metrics(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def calibrate(val: SplitScores, real_val: SplitScores | None, params: Params) -> Calibration:
    """Pixel and image thresholds from validation (see the module docstring)."""
    ev, bins = params.evaluate, params.evaluate.threshold_grid
    total = val.stacked_hists(bins).sum(0)
    has_watermark, _ = val.labels()
    if int(total[0].sum()) == 0:
        threshold = params.predict.threshold
        log.warning("validation has no watermark pixels: pixel threshold not calibrated, using %.3f", threshold)
        image_threshold, _ = best_image_threshold(np.array(val.scores), has_watermark, "balanced_accuracy")
        return Calibration(threshold, image_threshold, ev.image_objective, None, None, None, False,
                           "validation has no watermark pixel")  # fmt: skip
    if ev.image_objective != "pixel_f1":
        threshold, f1 = best_threshold(total, interior=True)
        image_threshold, _ = best_image_threshold(np.array(val.scores), has_watermark, ev.image_objective)
        return Calibration(threshold, image_threshold, ev.image_objective, f1, None, None, True,
                           f"pixel F1 and image {ev.image_objective} maximised apart")  # fmt: skip
    return joint_thresholds(val, real_val, bins, ev.max_real_fp_area, ev.max_real_flagged, ev.f1_tolerance)


def image_threshold_candidates(scores: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring distinct scores, one below the lowest and one above the highest.

    A midpoint keeps the margin to both sides. Scores are first rounded to SCORE_DECIMALS, so that a
    float-level change of the scores (another summation order) cannot move the candidates; beyond
    MAX_IMAGE_CANDIDATES distinct scores (far more than a validation split holds), quantiles.
    """
    s = np.unique(np.round(scores.astype(np.float64), SCORE_DECIMALS))
    if s.size > MAX_IMAGE_CANDIDATES:
        s = np.unique(np.quantile(s, np.linspace(0.0, 1.0, MAX_IMAGE_CANDIDATES)))
    step = 10.0**-SCORE_DECIMALS
    return np.concatenate([[s[0] - step], (s[:-1] + s[1:]) / 2, [s[-1] + step]]) if s.size else np.array([0.5])


def _gated_pooled(counts: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Pooled counts (M, B, 4) for M gate choices: counts (N, B, 4) of N images, keep (M, N) bool."""
    k = keep.double()
    tp, fp, fn, tn = (counts[..., i].double() for i in range(4))  # each (N, B)
    kept_tp, kept_fp = k @ tp, k @ fp
    return torch.stack([kept_tp, kept_fp, fn.sum(0) + tp.sum(0) - kept_tp, tn.sum(0) + fp.sum(0) - kept_fp], -1)


def _best_pair(f1: torch.Tensor, balanced: torch.Tensor) -> tuple[int, int]:
    """(image index m, pixel index b) of the best F1 (M, B); ties go to the image threshold with the best
    val balanced accuracy (M,), then to the lowest thresholds."""
    best = f1.max()
    tied = (f1 >= best - 1e-12).any(1)
    m = int(torch.argmax(torch.where(tied, balanced, torch.full_like(balanced, -1.0))))
    return m, int(torch.argmax((f1[m] >= best - 1e-12).to(torch.uint8)))


def _least_real_marking(
    f1: torch.Tensor, tolerance: float, fp_area: torch.Tensor | None, flagged: torch.Tensor | None
) -> torch.Tensor:
    """f1 (M, B) with every pair but the tied ones (within `tolerance` of the best) that mark the least of
    the real clean photos (area, then flagged count) set to -2; unchanged without real photos."""
    if fp_area is None or flagged is None:
        return f1
    tied = f1 >= f1.max() - max(tolerance, 1e-12)
    for marking in (fp_area, flagged):
        least = torch.where(tied, marking, torch.full_like(marking, torch.inf)).min()
        tied &= marking <= least + 1e-12
    return torch.where(tied, f1, torch.full_like(f1, -2.0))


def real_marking(real: SplitScores, bins: int, image_thresholds: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """How much of the real clean photos gated masks mark: (fp_area, flagged share), each (M, B) for M image
    thresholds x the grid pixel thresholds (every pixel of these photos is clean)."""
    _, real_counts = counts_at_thresholds(real.stacked_hists(bins))  # (R, B, 4)
    real_keep = torch.from_numpy(np.array(real.scores)[None, :] >= image_thresholds[:, None]).double()  # (M, R)
    positives = real_counts[..., 1].double()  # (R, B)
    fp_area = (real_keep @ positives) / float(real_counts[:, 0].sum())
    flagged = (real_keep @ (positives > 0).double()) / len(real.scores)
    return fp_area, flagged


def joint_thresholds(
    val: SplitScores,
    real_val: SplitScores | None,
    bins: int,
    max_fp_area: float,
    max_flagged: float,
    f1_tolerance: float = 0.0,
) -> Calibration:
    """The (pixel, image) threshold pair with the best gated val pixel F1 within the real-photo budgets.

    Pairs within `f1_tolerance` of the best F1 are tied: the one marking the least of the real clean val
    photos wins (area, then flagged count). Remaining ties go to the image threshold that best separates
    marked from clean val images (balanced accuracy), then to the lowest thresholds.
    """
    real = real_val if real_val is not None and real_val.samples else None
    has_watermark, _ = val.labels()
    all_scores = np.array(val.scores + (real.scores if real else []))
    candidates = image_threshold_candidates(all_scores)
    thresholds, counts = counts_at_thresholds(val.stacked_hists(bins))  # (N, B, 4)
    keep = torch.from_numpy(np.array(val.scores)[None, :] >= candidates[:, None])  # (M, N)
    f1 = scores_from_counts(_gated_pooled(counts, keep), empty_is_perfect=False)["f1"]  # (M, B)
    f1[:, 0] = f1[:, -1] = -1.0  # interior pixel thresholds only: 0 marks everything, 1 almost nothing
    fp_area = flagged = None
    feasible = torch.ones_like(f1, dtype=torch.bool)
    if real is not None:
        fp_area, flagged = real_marking(real, bins, candidates)
        feasible = (fp_area <= max_fp_area) & (flagged <= max_flagged)
    balanced = torch.tensor([decision_scores(np.array(val.scores), has_watermark, float(t))["balanced_accuracy"]
                             for t in candidates], dtype=torch.float64).nan_to_num(0.0)  # fmt: skip
    if bool(feasible.any()):
        within_budgets = torch.where(feasible, f1, torch.full_like(f1, -2.0))
        m, b = _best_pair(_least_real_marking(within_budgets, f1_tolerance, fp_area, flagged), balanced)
        within = real is not None
        tie = f", ties within {f1_tolerance:g} to the least real marking" if real and f1_tolerance > 0 else ""
        reason = f"best gated val pixel F1{tie}" + (
            f" within the real-photo budgets (fp area <= {max_fp_area:g}, flagged <= {max_flagged:g})" if real else
            " (no real clean val photos: no false-positive budget applied)")  # fmt: skip
    else:
        least = fp_area.min()
        m, b = _best_pair(torch.where(fp_area <= least + 1e-12, f1, torch.full_like(f1, -2.0)), balanced)
        within = False
        reason = (f"no threshold pair meets the real-photo budgets (fp area <= {max_fp_area:g}, flagged <= "
                  f"{max_flagged:g}): the least real false-positive area was taken")  # fmt: skip
        log.warning("calibration: %s", reason)
    return Calibration(
        threshold=float(thresholds[b]),
        image_threshold=float(candidates[m]),
        objective="pixel_f1",
        val_f1=float(f1[m, b]),
        real_fp_area=None if fp_area is None else float(fp_area[m, b]),
        real_flagged=None if flagged is None else float(flagged[m, b]),
        within_budget=within,
        reason=reason,
    )
