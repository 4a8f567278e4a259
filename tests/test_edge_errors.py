"""bench/edge_errors.py's error bins on hand-made masks: edge errors, faint pixels, whole-mark misses."""

from __future__ import annotations

import numpy as np
import pytest

from bench.edge_errors import error_profile, summarise


def square(shape=(40, 40), top=10, left=10, side=12) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_a_prediction_one_pixel_off_is_all_edge_error_and_fully_forgiven_at_one_pixel():
    truth, alpha = square(), np.where(square(), 200, 0).astype(np.uint8)
    pred = square(left=11)  # shifted right by one pixel: a 1-px column missed, a 1-px column extra
    report = summarise(error_profile(pred, truth, alpha))
    assert report["f1"] == pytest.approx(2 * 132 / (2 * 132 + 12 + 12), abs=1e-4)
    assert report["fp_share_by_distance_px"]["1"] == 1.0 and report["fn_share_by_distance_px"]["1"] == 1.0
    assert report["f1_forgiving"]["1px"] == 1.0


def test_a_missed_mark_counts_at_every_depth_and_its_faint_fringe_by_alpha():
    truth = square()
    alpha = np.where(truth, 230, 0).astype(np.uint8)
    alpha[truth & ~square(top=11, left=11, side=10)] = 20  # a 1-px fringe at alpha 20/255 (~8%)
    found = summarise(error_profile(truth & square(top=11, left=11, side=10), truth, alpha))
    assert found["fn_share_by_alpha"]["13-25"] == 1.0 and found["miss_rate_by_alpha"]["13-25"] == 1.0
    assert found["miss_rate_by_alpha"]["192-255"] == 0.0
    missed = summarise(error_profile(np.zeros_like(truth), truth, alpha))
    assert missed["recall"] == 0.0 and missed["f1_forgiving"]["2px"] == 0.0
    assert sum(missed["fn_share_by_distance_px"].values()) == pytest.approx(1.0)
    assert missed["fn_share_by_distance_px"]["4-6"] > 0  # the square's inside is more than 3 px from its edge
