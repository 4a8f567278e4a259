"""bench/gate_scores.py on hand-made maps: the shipped rule reproduces `wm evaluate`, small-mark recall counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.gate_scores import RULES, corner_lifted, corner_score, rule_row, small_mark_recall
from tests.fixtures import evaluate_params
from wmcore.evaluate.run import metrics_at
from wmcore.evaluate.samples import EvalSample
from wmcore.evaluate.score import SplitScores
from wmcore.metrics import image_score, threshold_histograms

BINS = 11


def mark(side: int, pixels: int, prob: float, background: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, truth) of a side x side image whose first `pixels` pixels are a mark predicted at `prob`."""
    truth = np.zeros(side * side, bool)
    truth[:pixels] = True
    probs = np.where(truth, prob, background).astype(np.float32)
    return probs.reshape(side, side), truth.reshape(side, side)


def scored(images: list[tuple[np.ndarray, np.ndarray]]) -> tuple[SplitScores, dict[str, list[float]]]:
    """One pass's SplitScores (shipped score) and each rule's scores of the same images."""
    split, alt = SplitScores(), {rule: [] for rule in RULES}
    for i, (probs, truth) in enumerate(images):
        split.samples.append(EvalSample(f"s{i}", Path(f"s{i}.png"), None, bool(truth.any())))
        split.hists.append(threshold_histograms(torch.from_numpy(probs), torch.from_numpy(truth), BINS))
        split.scores.append(image_score(probs))
        split.has_watermark.append(bool(truth.any()))
        split.sizes.append(probs.shape)
        for rule, score in RULES.items():
            alt[rule].append(score(probs))
    return split, alt


def test_small_mark_recall_counts_only_marks_under_the_area_share():
    split, _ = scored([mark(100, 20, 0.9), mark(100, 30, 0.9), mark(100, 1000, 0.9), mark(100, 0, 0.0)])
    split.scores = [0.9, 0.4, 0.1, 0.0]  # the 20 px mark kept, the 30 px one gated; the 10% mark is no small mark
    assert small_mark_recall(split, 0.5, BINS) == {"n_images": 2, "recall": 0.5}
    assert small_mark_recall(split, 0.5, BINS, below=0.2) == {"n_images": 3, "recall": pytest.approx(1 / 3, abs=1e-4)}


def test_the_shipped_rule_reproduces_evaluate_and_each_rule_is_scored_with_its_own_scores(tmp_path):
    # 200 x 200 px: the shipped rule averages the top 40 px, so a 20 px mark at 0.95 on a 0.05 background
    # scores 0.5 there and 0.95 under top 0.01% (16 px)
    val = [mark(200, 20, 0.95, 0.05), mark(200, 2000, 0.95, 0.05), mark(200, 0, 0.0, 0.05)]
    test = [mark(200, 20, 0.95, 0.05), mark(200, 2000, 0.8, 0.05), mark(200, 0, 0.0, 0.3)]
    splits, alt = {}, {}
    for name, images in (("val", val), ("test", test)):
        splits[name], alt[name] = scored(images)
    assert alt["test"]["top 0.1% (shipped)"] == splits["test"].scores  # image_score's default is the shipped rule
    assert alt["test"]["top 0.1% (shipped)"][0] == pytest.approx(0.5) and alt["test"]["top 0.01%"][0] == pytest.approx(0.95)
    params = evaluate_params(tmp_path, tmp_path / "prepared", threshold_grid=BINS)
    shipped = rule_row(params, splits, alt, "top 0.1% (shipped)")
    c = shipped["calibration"]
    reference = metrics_at(splits, c["threshold"], c["image_threshold"], params)
    for split in ("val", "test"):
        assert {k: shipped[split][k] for k in ("f1", "recall", "image_recall")} == {
            k: reference[split][k] for k in ("f1", "recall", "image_recall")}
    tight = rule_row(params, splits, alt, "top 0.01%")
    assert tight["calibration"]["image_threshold"] != c["image_threshold"]  # calibrated on its own scores
    assert tight["small_mark_image_recall"]["test"] == {"n_images": 1, "recall": 1.0}


def test_corner_rules_lift_only_what_lies_in_a_corner_window():
    # 200 x 200 px, a 20 px mark at 0.95 on a 0.05 background: the shipped top-40 score is 0.5 wherever it is
    corner, centre = np.full((200, 200), 0.05, np.float32), np.full((200, 200), 0.05, np.float32)
    corner[190:194, 185:190] = 0.95  # bottom-right, inside the last third of both sides
    centre[98:102, 98:103] = 0.95
    assert image_score(corner) == pytest.approx(0.5) and image_score(centre) == pytest.approx(0.5)
    assert corner_score(corner, 1 / 3) == pytest.approx(0.95)  # a 67 x 67 window averages its top 16 px
    assert corner_score(centre, 1 / 3) == pytest.approx(0.05)
    assert corner_score(corner, 1 / 40) == pytest.approx(0.05)  # a 5 x 5 window ends before the mark
    assert corner_lifted(corner, 1 / 3, 0.2) == pytest.approx(0.99)
    assert corner_lifted(centre, 1 / 3, 0.2) == pytest.approx(0.81)  # the lift maps an empty corner to 1 - 0.95 * 0.2
    strong = centre.copy()
    strong[80:120, 80:120] = 0.999  # confident evidence outside the corners keeps the shipped score
    assert corner_lifted(strong, 1 / 3, 0.2) == pytest.approx(image_score(strong))
