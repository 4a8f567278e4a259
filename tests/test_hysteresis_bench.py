"""bench/hysteresis.py: its one map per high threshold thresholds exactly to the hysteresis masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bench.hysteresis import EIGHT, hysteresis_maps

BINS = 11


def brute_force(probs: np.ndarray, low: float, high: float) -> np.ndarray:
    """Pixels >= low in an 8-connected component (of pixels >= low) that holds a pixel >= high."""
    labels, _ = ndimage.label(probs >= low, EIGHT)
    seeded = np.unique(labels[(probs >= high) & (labels > 0)])
    return np.isin(labels, seeded) & (labels > 0)


def test_map_per_high_threshold_gives_every_hysteresis_mask() -> None:
    rng = np.random.default_rng(0)
    probs = ndimage.uniform_filter(rng.random((40, 40)), 3).astype(np.float32)
    probs = (probs - probs.min()) / (probs.max() - probs.min())
    highs = [0.7, 0.9]
    maps = hysteresis_maps(probs, highs, BINS, lowest=0.2)
    for high in highs:
        for k in range(2, BINS):  # every grid low threshold from `lowest` up, above the high one too
            low = k / (BINS - 1)
            expected = brute_force(probs, low, high) if low <= high else probs >= low
            np.testing.assert_array_equal(maps[high] >= low, expected, err_msg=f"low {low}, high {high}")
        assert (maps[high][probs < 0.2] == 0).all()  # nothing under `lowest`


def test_fringe_joins_its_stroke_and_a_weak_speck_is_dropped() -> None:
    probs = np.zeros((6, 10), np.float32)
    probs[1, 1:5] = [0.95, 0.6, 0.4, 0.3]  # a stroke fading into its fringe
    probs[4, 8] = 0.6  # a speck with no strong pixel
    q = hysteresis_maps(probs, [0.9], BINS, lowest=0.2)[0.9]
    assert (q[1, 1:5] >= 0.3).all() and q[1, 1] == pytest.approx(0.95)
    assert q[4, 8] == 0.0  # at any low threshold the speck is gone; a plain threshold of 0.3 keeps it
