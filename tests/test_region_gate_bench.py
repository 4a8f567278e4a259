"""bench/region_gate.py: region statistics and the map whose thresholds are region cuts, on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bench.region_gate import EIGHT, STATS, TOP, inverse_spread, region_maps, region_stats, spread, variant_name


def test_region_statistics_match_a_per_region_loop() -> None:
    rng = np.random.default_rng(1)
    probs = ndimage.uniform_filter(rng.random((50, 60)), 3).astype(np.float32)
    probs = (probs - probs.min()) / (probs.max() - probs.min())
    labels, stats = region_stats(probs, 0.6)
    expected, n = ndimage.label(probs >= 0.6, EIGHT)
    np.testing.assert_array_equal(labels, expected)
    assert n > 3  # several regions, some larger than TOP pixels
    assert max(np.bincount(labels.ravel())[1:]) > TOP
    for k in range(1, n + 1):
        values = np.sort(probs[labels == k].astype(np.float64))[::-1]
        assert stats["max"][k] == pytest.approx(values[0])
        assert stats["mean"][k] == pytest.approx(values.mean())
        assert stats["top16"][k] == pytest.approx(values[:TOP].mean())


def test_cut_on_the_map_keeps_only_confident_regions() -> None:
    probs = np.zeros((8, 12), np.float32)
    probs[1, 1:4] = [0.999, 0.998, 0.997]  # a small confident label
    probs[5, 5:10] = 0.9  # a wide weak blob
    q = region_maps(probs, [0.8])
    for stat in STATS:
        cut = spread(np.array([0.99]))[0]  # keep regions whose statistic reaches 0.99
        kept = q[variant_name(0.8, stat)] >= cut
        assert kept[1, 1:4].all() and not kept[5].any() and kept.sum() == 3
    assert inverse_spread(float(spread(np.array([0.997]))[0])) == pytest.approx(0.997)
