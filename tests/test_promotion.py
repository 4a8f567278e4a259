"""The promotion rule (wmcore.metrics.promotion) and the export decision that applies it."""

from __future__ import annotations

import math
from pathlib import Path

from wmcore.evaluate.promote import promotion_record
from wmcore.metrics.promotion import Scores, beats, why_not


def test_a_higher_test_f1_wins_only_without_a_worse_heldout_f1_or_real_photo_area():
    shipped = Scores(0.6546, 0.734, 0.001047)
    assert beats(Scores(0.66, 0.74, 0.0010), shipped)
    assert beats(Scores(0.66, 0.734, 0.001047), shipped)  # level on both guards: the higher test F1 decides
    assert not beats(Scores(0.6546, 0.80, 0.0), shipped)  # test F1 must be strictly higher
    # the quick fine-tune of 7 Dec: +0.001 test F1, held-out 0.734 -> 0.534, real photos marked 29% more
    assert why_not(Scores(0.655596, 0.534443, 0.001348), shipped) == "held-out F1 0.5344 is below 0.7340"
    assert "real-photo false-positive area" in why_not(Scores(0.66, 0.74, 0.0011), shipped)


def test_unmeasured_guards_are_not_compared_and_a_missing_test_f1_never_wins():
    assert beats(Scores(0.7, None, None), Scores(0.6, 0.9, 0.0))
    assert beats(Scores(0.7, 0.5, 0.01), Scores(0.6))
    assert not beats(Scores(None, 0.9, 0.0), Scores(0.1))
    assert not beats(Scores(math.nan), Scores(0.1))
    assert beats(Scores(0.1), Scores(None)) and beats(Scores(0.1), Scores(math.nan))
    assert Scores.of({"test": {"f1": 0.7}, "test_heldout": {"f1": 0.6}, "real_test": {"fp_area": 0.002}}) == Scores(
        0.7, 0.6, 0.002)
    assert Scores.of({"test": {"f1": 0.7}}) == Scores(0.7)


def test_the_export_keeps_the_shipped_model_when_the_candidate_pays_on_real_photos():
    def metrics(test, heldout, area):
        return {"test": {"f1": test}, "test_heldout": {"f1": heldout}, "real_test": {"fp_area": area}}

    record = promotion_record(metrics(0.7, 0.8, 0.003), metrics(0.6, 0.8, 0.001), Path("best.pt"), Path("shipped.pt"))
    assert record["promoted"] == "pretrained" and "false-positive area" in record["reason"]
    assert (record["candidate_real_test_fp_area"], record["pretrained_real_test_fp_area"]) == (0.003, 0.001)
    won = promotion_record(metrics(0.7, 0.8, 0.001), metrics(0.6, 0.8, 0.001), Path("best.pt"), Path("shipped.pt"))
    assert won["promoted"] == "candidate" and won["reason"] is None
