"""Pure metric functions on hand-made masks and scores with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wmcore.metrics import (
    average_precision,
    best_image_threshold,
    best_threshold,
    confusion_counts,
    counts_at,
    counts_at_thresholds,
    decision_scores,
    image_score,
    positive_fraction,
    precision_recall_curve,
    roc_auc,
    scores_from_counts,
    threshold_histograms,
    threshold_index,
)


def mask(rows: list[str]) -> torch.Tensor:
    """Boolean mask from strings: '#' = watermark pixel, '.' = clean."""
    return torch.tensor([[c == "#" for c in row] for row in rows])


TRUTH = mask(["##..", "##..", "....", "...."])


@pytest.mark.parametrize(
    ("pred", "counts", "expected"),
    [
        # perfect: every watermark pixel found, nothing else
        (TRUTH, [4, 0, 0, 12], {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0}),
        # nothing predicted: recall 0, precision 0 (no true positive)
        (mask(["....", "....", "....", "...."]), [0, 0, 4, 12], {"precision": 0.0, "recall": 0.0, "f1": 0.0}),
        # disjoint: four false positives, four misses
        (mask(["....", "....", "..##", "..##"]), [0, 4, 4, 8], {"f1": 0.0, "iou": 0.0}),
        # partial overlap: tp 2, fp 2, fn 2 -> P = R = F1 = 1/2, IoU = 2/6
        (mask(["....", "####", "....", "...."]), [2, 2, 2, 10], {"precision": 0.5, "recall": 0.5, "f1": 0.5, "iou": 1 / 3}),
        # over-prediction: the whole image -> P = 4/16, R = 1, F1 = 8/20, IoU = 4/16
        (mask(["####"] * 4), [4, 12, 0, 0], {"precision": 0.25, "recall": 1.0, "f1": 0.4, "iou": 0.25}),
    ],
    ids=["perfect", "empty-pred", "disjoint", "partial", "everything"],
)
def test_pixel_scores_from_hand_made_masks(pred: torch.Tensor, counts: list[int], expected: dict[str, float]) -> None:
    got_counts = confusion_counts(pred, TRUTH)
    assert got_counts.tolist() == counts
    scores = scores_from_counts(got_counts)
    for key, value in expected.items():
        assert float(scores[key]) == pytest.approx(value), key


@pytest.mark.parametrize(("empty_is_perfect", "expected"), [(True, 1.0), (False, 0.0)])
def test_clean_image_with_no_prediction(empty_is_perfect: bool, expected: float) -> None:
    empty = torch.zeros(4, 4, dtype=torch.bool)
    scores = scores_from_counts(confusion_counts(empty, empty), empty_is_perfect=empty_is_perfect)
    assert float(scores["f1"]) == expected and float(scores["iou"]) == expected


def test_per_image_counts_rows() -> None:
    preds = torch.stack([TRUTH, ~TRUTH])
    counts = confusion_counts(preds, torch.stack([TRUTH, TRUTH]), per_image=True)
    assert counts.tolist() == [[4, 0, 0, 12], [0, 12, 4, 0]]
    assert scores_from_counts(counts)["f1"].tolist() == [1.0, 0.0]


def test_confusion_counts_shape_mismatch_names_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(3, 4\)"):
        confusion_counts(TRUTH, TRUTH[:3])


@pytest.mark.parametrize("bins", [3, 11, 49, 256])
def test_histogram_counts_equal_exact_thresholding(bins: int) -> None:
    gen = torch.Generator().manual_seed(bins)
    probs = torch.rand(3, 20, 20, generator=gen)
    probs[0, 0, :5] = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.75])  # grid values and the ends
    target = torch.rand(3, 20, 20, generator=gen) > 0.7
    thresholds, counts = counts_at_thresholds(threshold_histograms(probs, target, bins))
    for k in range(bins):
        exact = confusion_counts(probs.double() >= thresholds[k], target)
        assert counts[k].long().tolist() == exact.tolist(), f"threshold {float(thresholds[k])}"


def test_per_image_histograms_stack() -> None:
    probs = torch.tensor([[[0.1, 0.9]], [[0.6, 0.2]]])
    target = torch.tensor([[[False, True]], [[True, False]]])
    hists = torch.stack([threshold_histograms(p, t, bins=11) for p, t in zip(probs, target, strict=True)])
    _, counts = counts_at_thresholds(hists)
    assert counts.shape == (2, 11, 4)
    assert counts[:, 5].long().tolist() == [[1, 0, 0, 1], [1, 0, 0, 1]]  # threshold 0.5
    assert counts[:, 7].long().tolist() == [[1, 0, 0, 1], [0, 0, 1, 1]]  # threshold 0.7
    assert counts_at(hists, 0.7).long().tolist() == counts[:, 7].long().tolist()
    assert counts_at_thresholds(hists.sum(0))[1][7].long().tolist() == [1, 0, 1, 2]


@pytest.mark.parametrize(("threshold", "bins", "index"), [(0.0, 49, 0), (1.0, 49, 48), (0.5, 49, 24), (0.7, 11, 7)])
def test_threshold_index(threshold: float, bins: int, index: int) -> None:
    assert threshold_index(threshold, bins) == index


def test_best_threshold_separating_scores() -> None:
    # watermark pixels 0.8 and 0.9, clean pixels 0.1 and 0.6: any threshold in (0.6, 0.8] is perfect;
    # the lowest grid value in it is 0.7.
    probs = torch.tensor([0.8, 0.9, 0.1, 0.6])
    target = torch.tensor([True, True, False, False])
    threshold, f1 = best_threshold(threshold_histograms(probs, target, bins=11))
    assert threshold == pytest.approx(0.7)
    assert f1 == pytest.approx(1.0)


def test_val_threshold_applied_unchanged_to_test() -> None:
    val_probs, val_truth = torch.tensor([0.35, 0.45, 0.05, 0.25]), torch.tensor([True, True, False, False])
    threshold, _ = best_threshold(threshold_histograms(val_probs, val_truth, bins=21))
    assert threshold == pytest.approx(0.3)  # lowest grid value above the clean 0.25
    test_probs = torch.tensor([0.32, 0.2, 0.31, 0.1, 0.9])
    test_truth = torch.tensor([True, True, False, False, True])
    # at 0.3: tp {0.32, 0.9}, fp {0.31}, fn {0.2}, tn {0.1}
    counts = counts_at(threshold_histograms(test_probs, test_truth, bins=21), threshold)
    assert counts.long().tolist() == [2, 1, 1, 1]
    assert float(scores_from_counts(counts)["f1"]) == pytest.approx(4 / 6)


def test_precision_recall_curve_points() -> None:
    probs = torch.tensor([0.9, 0.6, 0.4, 0.1])
    target = torch.tensor([True, False, True, False])
    curve = precision_recall_curve(threshold_histograms(probs, target, bins=3))
    # thresholds 0, 0.5, 1.0: at 1.0 nothing is predicted, so that point is left out
    assert curve == [
        {"threshold": 0.0, "precision": 0.5, "recall": 1.0},
        {"threshold": 0.5, "precision": 0.5, "recall": 0.5},
    ]


def test_positive_fraction() -> None:
    counts = torch.tensor([[0, 3, 0, 9], [2, 2, 0, 0], [0, 0, 0, 0]])
    assert positive_fraction(counts).tolist() == [0.25, 1.0, 0.0]


@pytest.mark.parametrize(
    ("scores", "labels", "auroc", "ap"),
    [
        # pairs (pos, neg): (.9,.8) (.9,.6) (.7,.6) right, (.7,.8) wrong -> 3/4; AP = (1 + 2/3) / 2
        ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 0.75, (1 + 2 / 3) / 2),
        ([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 1.0, 1.0),
        ([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], 0.0, (1 / 3 + 2 / 4) / 2),
        ([0.5, 0.5], [1, 0], 0.5, None),  # a tie counts half
    ],
    ids=["mixed", "perfect", "inverted", "tie"],
)
def test_auroc_and_ap_by_hand(scores: list[float], labels: list[int], auroc: float, ap: float | None) -> None:
    assert roc_auc(np.array(scores), np.array(labels)) == pytest.approx(auroc)
    if ap is not None:
        assert average_precision(np.array(scores), np.array(labels)) == pytest.approx(ap)


def test_auroc_undefined_for_one_class() -> None:
    assert math.isnan(roc_auc(np.array([0.1, 0.9]), np.array([1, 1])))
    assert math.isnan(average_precision(np.array([0.1, 0.9]), np.array([0, 0])))


@pytest.mark.parametrize(
    ("hot_pixels", "expected"),
    [(0, 0.0), (1, 1 / 16), (25, 1.0)],
    ids=["clean", "one-hot-pixel", "a-mark"],
)
def test_image_score_needs_a_mark_not_a_pixel(hot_pixels: int, expected: float) -> None:
    probs = np.zeros((100, 100), np.float32)
    probs.ravel()[:hot_pixels] = 1.0
    assert image_score(probs) == pytest.approx(expected)


def test_image_threshold_chosen_on_val_applied_to_test() -> None:
    threshold, ba = best_image_threshold(np.array([0.1, 0.2, 0.6, 0.7]), np.array([0, 0, 1, 1]))
    assert threshold == pytest.approx(0.4) and ba == 1.0
    test = decision_scores(np.array([0.3, 0.45, 0.5, 0.9]), np.array([0, 0, 1, 1]), threshold)
    # decisions F T T T: clean recall 1/2, watermark recall 1
    assert test["balanced_accuracy"] == pytest.approx(0.75)
    assert test["accuracy"] == pytest.approx(0.75)
    assert test["precision"] == pytest.approx(2 / 3)
    assert test["f1"] == pytest.approx(0.8)


def test_image_threshold_f1_objective_and_degenerate_splits() -> None:
    # one clean image scores above a watermarked one: F1 prefers recall (threshold below 0.3)
    threshold, f1 = best_image_threshold(np.array([0.3, 0.5, 0.9]), np.array([1, 0, 1]), objective="f1")
    assert threshold < 0.3 and f1 == pytest.approx(0.8)
    only_clean = decision_scores(np.array([0.2, 0.8]), np.array([0, 0]), 0.5)
    assert only_clean["balanced_accuracy"] == 0.5 and math.isnan(only_clean["recall"])
    assert best_image_threshold(np.array([]), np.array([])) == (0.5, pytest.approx(float("nan"), nan_ok=True))


def test_best_threshold_interior_skips_the_ends() -> None:
    # a useless model: every pixel 0.5, so predicting everything (threshold 0) has the best F1
    probs, target = torch.full((8,), 0.5), torch.tensor([True, False] * 4)
    hist = threshold_histograms(probs, target, bins=5)
    assert best_threshold(hist)[0] == 0.0
    threshold, f1 = best_threshold(hist, interior=True)
    assert threshold == pytest.approx(0.25) and f1 == pytest.approx(2 / 3)
