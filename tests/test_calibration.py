"""Mask gating, the real-photo false-positive metric and threshold calibration within its budgets."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures import evaluate_params, make_tiny_prepared, write_random_checkpoint
from wmcore.evaluate import run as evaluate_run
from wmcore.evaluate.calibrate import image_threshold_candidates, joint_thresholds
from wmcore.evaluate.report import (
    flat_metrics,
    mark_area_metrics,
    real_clean_metrics,
    split_metrics,
    summary_table,
    tag_metrics,
)
from wmcore.evaluate.samples import EvalSample, load_split, manifest_tags
from wmcore.evaluate.score import SplitScores, real_clean_samples, score_split
from wmcore.infer.working_scale import FUSION_RULES
from wmcore.metrics import counts_at, gate_counts, image_score, scores_from_counts, threshold_histograms

BINS = 11  # grid thresholds 0.0, 0.1, ..., 1.0


def test_gate_counts_turns_the_marks_of_gated_images_into_misses_and_clean_pixels():
    counts = torch.tensor([[5, 2, 1, 92], [0, 7, 0, 93], [3, 0, 4, 93]])
    gated = gate_counts(counts, torch.tensor([True, False, False]))
    assert gated.tolist() == [[5, 2, 1, 92], [0, 0, 0, 100], [0, 0, 7, 93]]
    assert gated.sum(1).tolist() == counts.sum(1).tolist()  # pixels are neither made nor lost


def scores_of(maps: list[np.ndarray], truths: list[np.ndarray], kinds: list[str] | None = None) -> SplitScores:
    """SplitScores of hand-made probability maps, as one evaluation pass would keep them."""
    split = SplitScores()
    for i, (probs, truth) in enumerate(zip(maps, truths, strict=True)):
        kind = kinds[i] if kinds else "photo"
        split.samples.append(EvalSample(f"s{i}", Path(f"s{i}.png"), None, bool(truth.any()), False, kind))
        split.hists.append(threshold_histograms(torch.from_numpy(probs), torch.from_numpy(truth), BINS))
        split.scores.append(image_score(probs))
        split.has_watermark.append(bool(truth.any()))
        split.sizes.append(probs.shape)
    return split


def test_real_clean_metric_counts_marked_pixels_of_hand_made_maps():
    clean = np.zeros((10, 10), bool)
    grass = np.zeros((10, 10), np.float32)
    grass[:2, :5] = 0.8  # 10 hot pixels
    water = np.zeros((10, 10), np.float32)
    water[0, 0] = 0.35  # 1 lukewarm pixel
    quiet = np.full((10, 10), 0.05, np.float32)
    split = scores_of([grass, water, quiet], [clean] * 3, ["grass", "water", "document"])
    ungated = real_clean_metrics(split, 0.3, 0.5, BINS, gate=False)
    assert ungated["fp_area"] == pytest.approx(11 / 300, abs=1e-6)
    assert (ungated["n_flagged"], ungated["n_images"], ungated["flagged"]) == (2, 3, ["s0", "s1"])
    assert ungated["flagged_share"] == pytest.approx(2 / 3, abs=1e-6)
    assert ungated["fp_area_by_category"] == {"document": 0.0, "grass": 0.1, "water": 0.01}
    # the gate: image scores are the mean of the 16 hottest pixels: grass 0.5, water ~0.08, quiet 0.05
    gated = real_clean_metrics(split, 0.3, 0.2, BINS, gate=True)
    assert gated["flagged"] == ["s0"] and gated["fp_area"] == pytest.approx(10 / 300, abs=1e-6)
    assert real_clean_metrics(split, 0.3, 0.6, BINS, gate=True)["fp_area"] == 0.0


def test_tag_metrics_pool_the_counts_of_the_images_carrying_each_tag():
    """Per-style F1 on hand-made maps: each tag pools exactly its images' pixels; clean-only tags have no F1."""
    hit = np.zeros((10, 10), np.float32)
    hit[:2] = 0.9  # 20 marked, all true
    half = np.zeros((10, 10), np.float32)
    half[:1] = 0.9  # 10 marked of 20 true
    noisy = np.zeros((10, 10), np.float32)
    noisy[9, :5] = 0.9  # 5 marked on a clean image
    truth = np.zeros((10, 10), bool)
    truth[:2] = True
    split = scores_of([hit, half, noisy], [truth, truth, np.zeros((10, 10), bool)])
    tags = [("corner", "cjk"), ("corner", "phrase:url"), ("clean",)]
    split.samples = [EvalSample(s.id, s.image, None, s.has_watermark, tags=t) for s, t in zip(split.samples, tags, strict=True)]
    counts = counts_at(split.stacked_hists(BINS), 0.5)
    by_tag = tag_metrics(split, counts)
    assert set(by_tag) == {"clean", "cjk", "corner", "phrase:url"}
    assert by_tag["cjk"] == {"n_images": 1, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert by_tag["phrase:url"] == {"n_images": 1, "f1": pytest.approx(2 / 3, abs=1e-6), "precision": 1.0,
                                    "recall": 0.5}  # fmt: skip
    assert by_tag["corner"]["n_images"] == 2 and by_tag["corner"]["recall"] == 0.75  # 30 of 40 true pixels
    assert by_tag["clean"] == {"n_images": 1, "f1": None, "precision": None, "recall": None}
    metrics = split_metrics(split, 0.5, 0.0, BINS, gate=False)
    assert metrics["by_tag"] == by_tag
    split.samples = [EvalSample(s.id, s.image, None, s.has_watermark) for s in split.samples]  # no manifest tags
    assert "by_tag" not in split_metrics(split, 0.5, 0.0, BINS, gate=False)


def test_mark_area_metrics_score_small_and_large_marks_apart():
    """Hand-made 20x20 maps: a 1-pixel mark (0.25%), a 4-pixel one (1%), a 60-pixel one (15%), a clean image."""
    maps, truths = [], []
    for truth_px, predicted_px in [(1, 1), (4, 2), (60, 60)]:
        truth = np.zeros(400, bool)
        truth[:truth_px] = True
        probs = np.zeros(400, np.float32)
        probs[:predicted_px] = 0.9
        if truth_px == 60:
            probs[100:120] = 0.9  # 20 false positives beside the large mark
        maps.append(probs.reshape(20, 20))
        truths.append(truth.reshape(20, 20))
    clean = np.zeros((20, 20), np.float32)
    clean[5, :7] = 0.9
    split = scores_of([*maps, clean], [*truths, np.zeros((20, 20), bool)])
    by_area = mark_area_metrics(counts_at(split.stacked_hists(BINS), 0.5))
    assert list(by_area) == ["lt_0.5pct", "0.5_2pct", "2_8pct", "ge_8pct"]
    assert by_area["lt_0.5pct"] == {"n_images": 1, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert by_area["0.5_2pct"] == {"n_images": 1, "f1": pytest.approx(2 / 3, abs=1e-6), "precision": 1.0,
                                   "recall": 0.5}  # fmt: skip
    assert by_area["2_8pct"] == {"n_images": 0, "f1": None, "precision": None, "recall": None}
    assert by_area["ge_8pct"]["n_images"] == 1 and by_area["ge_8pct"]["precision"] == 0.75  # 60 of 80 marked
    gated = split_metrics(split, 0.5, 1.0, BINS, gate=True)["by_mark_area"]  # every mask gated away
    assert all(m["recall"] in (0.0, None) for m in gated.values())
    flat = flat_metrics({"test": split_metrics(split, 0.5, 0.0, BINS, gate=False)})
    assert flat["test/area_f1/lt_0.5pct"] == 1.0 and "test/area_f1/2_8pct" not in flat
    table = summary_table({"test": split_metrics(split, 0.5, 0.0, BINS, gate=False)})
    assert "test F1 by mark area: lt_0.5pct 1.000 (1), 0.5_2pct 0.667 (1), 2_8pct - (0), ge_8pct " in table


def test_manifest_tags_are_styles_then_phrase_kinds_ignoring_junk():
    row = {"styles": ["corner", "cjk", 3, "corner"], "phrase_kinds": ["url", None]}
    assert manifest_tags(row) == ("corner", "cjk", "phrase:url")
    assert manifest_tags({"styles": "corner"}) == () and manifest_tags({}) == ()


def _feasible_pairs(val: SplitScores, real: SplitScores, thresholds, candidates, max_fp: float, max_flagged: float):
    """(val F1, real fp area, real flagged share) of every pair within the budgets, tried one by one."""
    pairs = []
    for t, g in itertools.product(thresholds, candidates):
        keep = torch.from_numpy(np.array(val.scores) >= g)
        f1 = float(scores_from_counts(gate_counts(counts_at(val.stacked_hists(BINS), t), keep).sum(0))["f1"])
        m = real_clean_metrics(real, t, g, BINS, gate=True)
        if m["fp_area"] <= max_fp and m["flagged_share"] <= max_flagged:
            pairs.append((f1, m["fp_area"], m["flagged_share"]))
    return pairs


def _brute_force(val: SplitScores, real: SplitScores, thresholds, candidates, max_fp: float, max_flagged: float):
    """The best gated val F1 within the budgets, by trying every pair on the per-image maps' counts."""
    return max(f1 for f1, _, _ in _feasible_pairs(val, real, thresholds, candidates, max_fp, max_flagged))


def test_joint_calibration_takes_the_best_pair_within_the_real_photo_budgets():
    rng = np.random.default_rng(0)
    truths, maps = [], []
    for i in range(6):  # marked images: a 4x6 mark; noise around it
        truth = np.zeros((16, 16), bool)
        truth[4:8, 3:9] = True
        probs = rng.uniform(0.0, 0.45, (16, 16)).astype(np.float32)
        probs[truth] = rng.uniform(0.4, 0.95, truth.sum())
        truths.append(truth)
        maps.append(probs if i % 3 else probs * 0.6)  # some faint ones
    for _ in range(3):  # clean synthetic images with a hot spot
        probs = rng.uniform(0.0, 0.3, (16, 16)).astype(np.float32)
        probs[:3, :3] = 0.7
        truths.append(np.zeros((16, 16), bool))
        maps.append(probs)
    val = scores_of(maps, truths)
    real_maps = [rng.uniform(0.0, 0.55, (16, 16)).astype(np.float32) for _ in range(5)]
    real = scores_of(real_maps, [np.zeros((16, 16), bool)] * 5)
    for max_fp, max_flagged in [(1.0, 1.0), (0.02, 0.5), (0.001, 0.2)]:
        cal = joint_thresholds(val, real, BINS, max_fp, max_flagged)
        assert cal.within_budget and cal.real_fp_area <= max_fp and cal.real_flagged <= max_flagged
        m = real_clean_metrics(real, cal.threshold, cal.image_threshold, BINS, gate=True)
        assert m["fp_area"] == pytest.approx(cal.real_fp_area, abs=1e-6)
        assert m["flagged_share"] == pytest.approx(cal.real_flagged, abs=1e-6)
        grid = [k / (BINS - 1) for k in range(1, BINS - 1)]
        candidates = sorted(set(val.scores + real.scores))
        candidates = [candidates[0] - 1e-6] + [(a + b) / 2 for a, b in itertools.pairwise(candidates)]
        candidates += [max(val.scores + real.scores) + 1e-6]
        assert cal.val_f1 == pytest.approx(_brute_force(val, real, grid, candidates, max_fp, max_flagged))
        # Pairs within a tolerance of the best F1 are tied: the one marking the least real area wins.
        pairs = _feasible_pairs(val, real, grid, candidates, max_fp, max_flagged)
        best = max(f1 for f1, _, _ in pairs)
        for tolerance in (0.02, 0.1):
            tolerant = joint_thresholds(val, real, BINS, max_fp, max_flagged, f1_tolerance=tolerance)
            least = min(fp for f1, fp, _ in pairs if f1 >= best - tolerance)
            assert tolerant.real_fp_area == pytest.approx(least, abs=1e-6)
            assert best - tolerance - 1e-9 <= tolerant.val_f1 <= best + 1e-9
            assert f"ties within {tolerance:g}" in tolerant.reason
    loose, tight = joint_thresholds(val, real, BINS, 1.0, 1.0), joint_thresholds(val, real, BINS, 0.001, 0.2)
    assert tight.val_f1 <= loose.val_f1
    impossible = joint_thresholds(val, real, BINS, -1.0, -1.0)  # no pair can mark less than nothing
    assert not impossible.within_budget and impossible.real_fp_area == 0.0 and "least" in impossible.reason


def test_image_threshold_candidates_separate_every_score_and_ignore_float_noise():
    # 700 distinct scores, more than the 256 the quantile shortcut once started at: a change of the
    # scores at float precision (another summation order) moved the calibrated image threshold then.
    rng = np.random.default_rng(3)
    scores = np.round(rng.uniform(0.0, 1.0, 700), 6)
    scores[:40] = np.round(rng.uniform(0.99, 1.0, 40), 6)  # a crowded top, where image thresholds sit
    candidates = image_threshold_candidates(scores)
    distinct = np.unique(scores)
    assert candidates.size == distinct.size + 1 and np.all(np.diff(candidates) > 0)
    for low, high in itertools.pairwise(distinct):  # one candidate strictly between each neighbouring pair
        assert np.count_nonzero((candidates > low) & (candidates < high)) == 1
    assert candidates[0] < distinct[0] and candidates[-1] > distinct[-1]
    noisy = scores + rng.uniform(-2e-7, 2e-7, scores.size)
    np.testing.assert_array_equal(image_threshold_candidates(noisy), candidates)


def test_f1_tolerance_trades_noise_level_val_f1_for_less_marking_of_real_photos():
    # Val: a bold mark (20 px at 0.9) and a faint one (10 px at 0.45); a real clean photo has 20 px at 0.46,
    # so no image threshold keeps the faint mark without the photo. Catching the faint mark (F1 1.0) marks
    # the photo; leaving it (recall 20/30, F1 0.8) marks nothing.
    bold, faint, photo = (np.zeros((16, 16), np.float32) for _ in range(3))
    bold.flat[:20], faint.flat[:10], photo.flat[:20] = 0.9, 0.45, 0.46
    val = scores_of([bold, faint], [bold > 0, faint > 0])
    real = scores_of([photo], [np.zeros((16, 16), bool)])
    strict = joint_thresholds(val, real, BINS, 1.0, 1.0)
    assert strict.val_f1 == pytest.approx(1.0) and strict.real_fp_area == pytest.approx(20 / 256)
    assert joint_thresholds(val, real, BINS, 1.0, 1.0, f1_tolerance=0.1).real_fp_area == strict.real_fp_area
    tolerant = joint_thresholds(val, real, BINS, 1.0, 1.0, f1_tolerance=0.25)
    assert tolerant.val_f1 == pytest.approx(0.8) and tolerant.real_fp_area == 0.0 and tolerant.real_flagged == 0.0


def make_corpus(root: Path, photos: dict[str, int]) -> Path:
    """A tiny real-photo corpus at root: `photos` = {split: count} of 48x64 noisy pictures."""
    rng = np.random.default_rng(1)
    rows = []
    for split, count in photos.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rel = f"{split}/pic{i}.png"
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / rel)
            rows.append({"file": rel, "split": split, "category": ["grass", "water"][i % 2], "has_text": False,
                         "grey": False, "width": 64, "height": 48, "license": "CC0-1.0"})  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_evaluation_scores_real_clean_photos_and_calibrates_on_val_only(tmp_path, monkeypatch):
    prepared = make_tiny_prepared(tmp_path / "prepared", n_train=1, n_val=4, n_test=4)
    corpus = make_corpus(tmp_path / "corpus", {"train": 2, "val": 3, "test": 4})
    write_random_checkpoint(tmp_path / "train" / "best.pt")
    params = evaluate_params(tmp_path, prepared, n_overlay=0)
    assert len(real_clean_samples(corpus, "real_val")) == 3 and len(real_clean_samples(corpus, "real_test")) == 4
    truth = {}
    for split in ("val", "test"):
        for s in load_split(prepared, split):
            truth[np.asarray(Image.open(s.image).convert("RGB")).tobytes()] = np.asarray(Image.open(s.mask)) > 127

    def oracle(test_noise: float):
        """Marks at 0.9; every real photo gets a 0.6 patch; test images get `test_noise` everywhere else."""

        def predict(images):
            out = []
            for im in images:
                t = truth.get(np.ascontiguousarray(im).tobytes())
                if t is None:  # a real photo
                    probs = np.zeros(im.shape[:2], np.float32)
                    probs[:8, :8] = 0.6
                else:
                    probs = np.where(t, 0.9, 0.0).astype(np.float32)
                out.append(probs)
            return out

        def predict_test(images):
            maps = predict(images)
            return [np.maximum(p, test_noise) if np.ascontiguousarray(im).tobytes() in truth else p
                    for im, p in zip(images, maps, strict=True)]  # fmt: skip

        return predict, predict_test

    results = []
    for noise in (0.0, 0.8):  # what the test images look like must not move any threshold
        predict, predict_test = oracle(noise)
        monkeypatch.setattr(evaluate_run, "build_rule_maps_fn",
                            lambda *a, p=predict: lambda images: [dict.fromkeys(FUSION_RULES, m) for m in p(images)])
        monkeypatch.setattr(evaluate_run, "build_probability_fn", lambda *a, p=predict_test: p)
        results.append(evaluate_run.run_evaluation(params))
    clean_run, noisy_run = results
    for key in ("threshold", "image_threshold"):
        assert clean_run["test"][key] == noisy_run["test"][key] == clean_run["calibration"][key]
    assert clean_run["test"]["f1"] == 1.0 and noisy_run["test"]["f1"] < 1.0
    # the 0.6 patches on real photos: a pixel threshold above 0.6 (or a gate above their score) marks nothing
    for m in (clean_run, noisy_run):
        assert m["real_val"]["fp_area"] == 0.0 and m["real_test"]["fp_area"] == 0.0
        assert m["real_test"]["n_images"] == 4 and m["calibration"]["within_budget"]
    written = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert written["real_test"]["n_images"] == 4 and "fp_area_by_category" in written["real_test"]


def test_real_clean_photos_are_scored_as_all_clean(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", {"test": 2})
    samples = real_clean_samples(corpus, "real_test")
    scored = score_split(samples, lambda images: [np.full(im.shape[:2], 0.7, np.float32) for im in images], BINS, 2, 0)
    assert scored.has_watermark == [False, False] and len(scored.hists) == 2
    m = real_clean_metrics(scored, 0.5, 0.5, BINS, gate=True)
    assert m["fp_area"] == 1.0 and m["n_flagged"] == 2
