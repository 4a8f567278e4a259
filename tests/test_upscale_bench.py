"""bench/upscale.py: the wrapped predictor sees the upscaled image and returns a map of the original size."""

from __future__ import annotations

import numpy as np

from bench.upscale import upscaled


def test_map_comes_back_at_the_image_size_from_the_upscaled_pass():
    seen = []

    def predict(images):
        seen.extend(im.shape for im in images)
        # a map that marks the left half of whatever it is given
        return [np.where(np.arange(im.shape[1])[None, :] < im.shape[1] // 2, 1.0, 0.0).repeat(im.shape[0], 0)
                .astype(np.float32) for im in images]  # fmt: skip

    image = np.zeros((30, 40, 3), np.uint8)
    assert upscaled(predict, 1.0) is predict
    (probs,) = upscaled(predict, 2.0)([image])
    assert seen == [(60, 80, 3)] and probs.shape == (30, 40)
    np.testing.assert_allclose(probs[:, :20], 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[:, 20:], 0.0, atol=1e-6)
