"""bench/visibility.py: the regenerated sample is the library's, and the change map is the mark's alone."""

from __future__ import annotations

import numpy as np
import pytest

import wmcore.data.generator as generator
from bench.visibility import visible_change
from tests.test_prepare import _context, tiny_params
from wmcore.data.generator import generate_sample


@pytest.mark.parametrize("jpeg_share", [0.0, 1.0])
def test_change_is_the_marks_own_and_the_generator_is_restored(tmp_path, jpeg_share):
    ctx = _context(tiny_params(tmp_path, clean_share=0.0, jpeg_share=jpeg_share))
    original = generator.composite
    for index in range(3):
        image, mask, change = visible_change(ctx, "val", index)
        assert generator.composite is original  # the recorder unwraps itself
        np.testing.assert_array_equal(image, generate_sample(ctx, "val", index).image)  # same sample, same seed
        assert mask.any() and change[mask].mean() > 8  # marks are drawn visible (prepare.min_contrast)
        outside = change[~mask]
        if jpeg_share == 0.0:
            assert outside.max() <= 13  # off the mask alpha <= 5%: at most ~13 grey levels
        else:
            assert np.median(outside) <= 2  # compression noise cancels away from the mark


def test_clean_samples_change_nothing(tmp_path):
    ctx = _context(tiny_params(tmp_path, clean_share=1.0, jpeg_share=1.0))
    _, mask, change = visible_change(ctx, "val", 0)
    assert not mask.any() and change.max() == 0
