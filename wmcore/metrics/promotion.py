"""The promotion rule: when a candidate model replaces the one in place.

One rule for both places that promote (wmcore.evaluate.promote: which weights `wm evaluate` exports;
wmcore.tracking.mlflow_run: which registered version holds the MLflow `champion` alias), so the
exported file and the registry never disagree: the candidate wins only with a strictly higher test
pixel F1, measured on the same test data. A missing (None) or NaN score never wins; any measured
score beats an incumbent without one.
"""

from __future__ import annotations

import math

PROMOTION_METRIC = "test pixel F1"  # what `beats` compares, for messages


def beats(candidate_f1: float | None, incumbent_f1: float | None) -> bool:
    """True when the candidate's test F1 is strictly higher than the incumbent's (module docstring)."""
    if candidate_f1 is None or math.isnan(candidate_f1):
        return False
    if incumbent_f1 is None or math.isnan(incumbent_f1):
        return True
    return candidate_f1 > incumbent_f1
