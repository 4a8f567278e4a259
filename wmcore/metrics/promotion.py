"""The promotion rule: when a candidate model replaces the one in place.

One rule for both places that promote (wmcore.evaluate.promote: which weights `wm evaluate` exports;
wmcore.tracking.mlflow_run: which registered version holds the MLflow `champion` alias), so the
exported file and the registry never disagree. The candidate wins only with a strictly higher test
pixel F1, measured on the same test data, and without paying for it where users judge the model:
its style-held-out F1 may not be lower and its false-positive area on the never-trained real photos
may not be higher (each compared only where both models have it). A 3-minute fine-tune once won on
test F1 by 0.001 while its held-out F1 fell 0.734 -> 0.534 and it marked real photos 29% more.
A missing (None) or NaN test F1 never wins; any measured one beats an incumbent without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PROMOTION_METRIC = "test pixel F1"  # what `beats` compares first, for messages


@dataclass(frozen=True)
class Scores:
    """What the rule compares: test pixel F1, style-held-out pixel F1, real_test false-positive area (None: not measured)."""

    test_f1: float | None
    heldout_f1: float | None = None
    real_fp_area: float | None = None

    @classmethod
    def of(cls, metrics: dict) -> Scores:
        """From `wm evaluate`'s metrics ({"test": {"f1"}, "test_heldout": {"f1"}, "real_test": {"fp_area"}})."""
        return cls((metrics.get("test") or {}).get("f1"), (metrics.get("test_heldout") or {}).get("f1"),
                   (metrics.get("real_test") or {}).get("fp_area"))  # fmt: skip


def _measured(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def why_not(candidate: Scores, incumbent: Scores) -> str | None:
    """None when the candidate wins (module docstring), else the reason it does not, in words."""
    if not _measured(candidate.test_f1):
        return "no test F1"
    if not _measured(incumbent.test_f1):
        return None
    if not candidate.test_f1 > incumbent.test_f1:
        return f"test F1 {candidate.test_f1:.4f} does not beat {incumbent.test_f1:.4f}"
    if _measured(candidate.heldout_f1) and _measured(incumbent.heldout_f1) and candidate.heldout_f1 < incumbent.heldout_f1:
        return f"held-out F1 {candidate.heldout_f1:.4f} is below {incumbent.heldout_f1:.4f}"
    if (_measured(candidate.real_fp_area) and _measured(incumbent.real_fp_area)
            and candidate.real_fp_area > incumbent.real_fp_area):  # fmt: skip
        return f"real-photo false-positive area {candidate.real_fp_area:.6f} is above {incumbent.real_fp_area:.6f}"
    return None


def beats(candidate: Scores, incumbent: Scores) -> bool:
    """True when the candidate replaces the incumbent (module docstring)."""
    return why_not(candidate, incumbent) is None
