"""bench/group_calibration.py: samples fall in the source group they stand in for; group F1 is per-group pooled."""

from __future__ import annotations

import numpy as np
import torch

from bench.group_calibration import group_f1, group_masks, group_of
from wmcore.evaluate.samples import EvalSample
from wmcore.evaluate.score import SplitScores
from wmcore.metrics import threshold_histograms

BINS = 11


def test_first_matching_group_wins():
    assert group_of(("corner_label", "stamp", "white")) == "ai_label"
    assert group_of(("stamp", "centered")) == "stamp"
    assert group_of(("tiled", "rotated")) == "stock" and group_of(("grid",)) == "stock"
    assert group_of(("centered", "latin")) == "centred"
    assert group_of(("latin", "white")) == "text"


def split_of(images: list[tuple[tuple[str, ...], np.ndarray, np.ndarray]]) -> SplitScores:
    split = SplitScores()
    for i, (tags, probs, truth) in enumerate(images):
        split.samples.append(EvalSample(id=str(i), image=None, mask=None, tags=tags))
        split.hists.append(threshold_histograms(torch.from_numpy(probs), torch.from_numpy(truth), BINS))
        split.scores.append(1.0)
        split.has_watermark.append(bool(truth.any()))
    return split


def test_group_f1_pools_within_a_group_and_ignores_clean_images():
    truth = np.zeros((4, 4), bool)
    truth[0] = True  # 4 mark pixels
    perfect = truth.astype(np.float32)
    half = np.where(truth, np.array([1, 1, 0, 0], np.float32)[None, :], 0).astype(np.float32)  # finds 2 of 4
    noisy_clean = np.full((4, 4), 0.9, np.float32)  # a clean image marked everywhere
    split = split_of([(("corner_label",), perfect, truth), (("corner_label",), half, truth),
                      (("latin",), perfect, truth), (("clean",), noisy_clean, np.zeros((4, 4), bool))])  # fmt: skip
    assert set(group_masks(split)) == {"ai_label", "text"}
    f1 = group_f1(split, BINS, np.array([0.5]))
    k = 5  # pixel threshold 0.5 on the 11-step grid
    assert float(f1["ai_label"][0, k]) == 2 * 6 / (2 * 6 + 0 + 2)  # pooled: tp 6, fn 2
    assert float(f1["text"][0, k]) == 1.0  # the clean image's false pixels count in no group
