"""Flip test-time augmentation (`predict.tta_flip`): every batch averaged with its horizontally flipped pass.

Twice the compute, the same memory per call. The predictor wraps its tile runner with it, so every
pass through that runner (native tiles, the working view, refined windows) gets it alike.
"""

from __future__ import annotations

import numpy as np

from wmcore.infer.tiling import TileRunner


def flip_averaged(run_tiles: TileRunner) -> TileRunner:
    """A tile runner whose output is the mean of `run_tiles` on the tiles and on their mirror images.

    uint8 (N, h, w, 3) -> float32 (N, h, w): (run(x) + flip(run(flip(x)))) / 2, flip = left-right.
    The two passes are separate calls, so a call never holds more than one batch of activations.
    """

    def run(tiles: np.ndarray) -> np.ndarray:
        probs = run_tiles(tiles)
        mirrored = run_tiles(np.ascontiguousarray(tiles[:, :, ::-1]))
        return (probs + mirrored[:, :, ::-1]) * np.float32(0.5)

    return run
