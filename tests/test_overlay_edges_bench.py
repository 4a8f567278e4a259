"""bench/overlay_edges.py: six renderings of one credit line differ only in opacity and edge; counts add up."""

from __future__ import annotations

import numpy as np

from bench.overlay_edges import VARIANTS, credit_draws, rows, tally
from bench.tool_marks import _mpl_recipe


def test_the_six_renderings_share_place_and_size_and_differ_in_opacity_and_edge():
    photo = np.full((240, 320, 3), 90, np.uint8)
    draws = credit_draws(np.random.default_rng(2), photo.shape)
    assert tuple(draws) == VARIANTS
    opacity = {v: _mpl_recipe(photo, draw)[1] for v, draw in draws.items()}
    plain, opaque = opacity["plain, alpha 0.6-0.9"], opacity["plain, opaque"]
    assert 0.6 <= plain.max() <= 0.9 and opaque.max() > 0.99
    assert ((plain > 0.05) <= (opaque > 0.05)).all()  # same glyphs, same place (alpha only thins the fringe)
    box = [(lambda ys, xs: (ys.min(), ys.max(), xs.min(), xs.max()))(*np.nonzero(o > 0.3)) for o in (plain, opaque)]
    assert np.abs(np.subtract(*box)).max() <= 1
    for edge in ("stroke", "shadow"):
        edged = opacity[f"{edge}, opaque"] > 0.05
        # the glyphs plus an edge (path effects draw glyphs as paths, snapped a pixel apart)
        assert edged.sum() > 1.3 * (opaque > 0.05).sum() and edged[opaque > 0.5].mean() > 0.9


def test_tally_counts_found_gated_and_pooled_pixels():
    truth = np.zeros((10, 10), bool)
    truth[0, :4] = True
    probs = np.zeros((10, 10), np.float32)
    probs[0, :2] = 0.99  # half the mark found
    probs[9, 9] = 0.99  # one false pixel
    counts: dict = {}
    tally(counts, VARIANTS[0], probs, truth, 0.5, 0.5)  # score: top 16 of 100 px, mean 0.186: the gate stays shut
    tally(counts, VARIANTS[0], probs, truth, 0.5, 0.1)  # the gate opens
    assert counts[VARIANTS[0]] == [2, 2, 1, 2, 1, 6]
    r = rows(counts)[VARIANTS[0]]
    assert r == {"photos": 2, "found_ungated": 1.0, "found_gated": 0.5, "recall": 0.25, "f1": round(4 / 11, 4)}
    assert rows(counts)[VARIANTS[1]]["photos"] == 0
