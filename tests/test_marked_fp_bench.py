"""bench/marked_fp.py: regions split into true and false ones, pixels counted and cut as the probe reports them."""

from __future__ import annotations

import numpy as np

from bench.marked_fp import regions, summarise, weighted_quantiles


def test_regions_counts_each_connected_region_its_truth_pixels_and_peak():
    probs = np.zeros((20, 20), np.float32)
    probs[2:5, 2:6] = 0.9  # 12 px, the mark: 8 of them on the truth
    probs[3, 3] = 0.999
    probs[12:14, 12:14] = 0.95  # 4 px, a false region
    probs[10, 0] = 0.5  # under the threshold: no region
    truth = np.zeros((20, 20), bool)
    truth[2:4, 2:6] = True
    truth[18, 18] = True  # a mark pixel that is missed
    found = sorted(regions(probs, truth, 0.8))
    assert [(a, t) for a, t, _ in found] == [(4, 0), (12, 8)]
    assert np.isclose(found[0][2], 0.95) and np.isclose(found[1][2], 0.999)


def test_summarise_splits_fringe_from_false_regions_and_cuts_by_peak():
    rows = [
        {"category": "water", "pixels": 12, "on_truth": 8, "peak": 0.9999},  # a mark with 4 px of fringe
        {"category": "scene_text", "pixels": 30, "on_truth": 0, "peak": 0.9995},
        {"category": "water", "pixels": 10, "on_truth": 0, "peak": 0.95},
    ]
    s = summarise(rows)
    assert (s["true_pixels"], s["fringe_fp_pixels"], s["false_region_pixels"]) == (8, 4, 40)
    assert s["false_share_of_fp"] == round(40 / 44, 4)
    assert s["false_pixels_by_category"] == {"scene_text": 0.75, "water": 0.25}
    assert s["kept_by_peak_cut"]["0.99"] == {"true": 1.0, "false": 0.75}  # the 0.95 region goes
    assert s["kept_by_peak_cut"]["0.9999"] == {"true": 1.0, "false": 0.0}


def test_weighted_quantiles_count_each_value_by_its_weight():
    assert weighted_quantiles([0.1, 0.9], [1, 19]) == [0.9] * 5  # 95% of the weight sits at 0.9
    assert weighted_quantiles([0.1, 0.9], [9, 1])[:3] == [0.1, 0.1, 0.1]
    assert weighted_quantiles([], []) == []
