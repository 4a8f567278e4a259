"""Hard negatives: mined from the corpus's train photos only, and cropped into training backgrounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_calibration import make_corpus
from wmcore.config import validate
from wmcore.data.backgrounds import HardNegative, PhotoRef, corpus_photos, crop_around, load_hard_negatives
from wmcore.evaluate import mine
from wmcore.evaluate.mine import mine_hard_negatives, photo_regions


def test_photo_regions_are_relative_boxes_largest_first():
    probs = np.zeros((100, 200), np.float32)
    probs[10:20, 20:60] = 0.8  # 400 px
    probs[70:75, 150:160] = 0.5  # 50 px
    probs[90, 0] = 0.9  # 1 px: below min_pixels
    regions = photo_regions(probs, 0.3, min_pixels=16, limit=5)
    assert [r["box"] for r in regions] == [[0.1, 0.1, 0.3, 0.2], [0.75, 0.7, 0.8, 0.75]]
    assert regions[0]["peak"] == pytest.approx(0.8) and regions[0]["area"] == pytest.approx(400 / 20000)
    assert len(photo_regions(probs, 0.3, min_pixels=16, limit=1)) == 1


class HotCorner:
    """A stand-in predictor that marks the top-left 8x8 px of every image it is given."""

    threshold = 0.5

    def __init__(self) -> None:
        self.seen = 0

    def predict(self, images):
        self.seen += len(images)
        out = []
        for im in images:
            probs = np.zeros(im.shape[:2], np.float32)
            probs[:8, :8] = 0.9
            out.append(probs)
        return out


def test_mining_reads_only_train_photos_and_writes_their_regions(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", {"train": 3, "val": 2, "test": 2})
    params = validate({"paths": {"corpus": str(corpus), "hard_negatives": str(tmp_path / "hn.jsonl"),
                                 "pretrained": "unused.pt", "cache_dir": str(tmp_path / "cache")}})  # fmt: skip
    fake = HotCorner()
    monkeypatch.setattr(mine, "get_predictor", lambda *a, **k: fake)
    summary = mine_hard_negatives(params)
    lines = [json.loads(line) for line in (tmp_path / "hn.jsonl").read_text().splitlines()]
    assert fake.seen == 3 and summary["photos"] == 3 and summary["regions"] == 3 == len(lines)
    assert {line["file"] for line in lines} == {f"train/pic{i}.png" for i in range(3)}
    assert lines[0]["box"] == [0.0, 0.0, round(8 / 64, 5), round(8 / 48, 5)]
    assert summary["fp_area"] == pytest.approx(64 / (48 * 64), abs=1e-6)
    hard = load_hard_negatives(tmp_path / "hn.jsonl", corpus_photos("train", corpus), corpus)
    assert len(hard) == 3 and all(h.ref.source == "corpus" for h in hard)
    # a line naming a photo that is not a background (here: a val photo) is left out
    (tmp_path / "hn.jsonl").write_text(json.dumps({"file": "val/pic0.png", "box": [0, 0, 0.5, 0.5]}) + "\nnot json\n")
    assert load_hard_negatives(tmp_path / "hn.jsonl", corpus_photos("train", corpus), corpus) == []


@pytest.mark.parametrize("seed", range(5))
def test_a_hard_negative_crop_keeps_the_mined_region_in_view(tmp_path, seed):
    photo = Image.new("RGB", (400, 300), (40, 120, 40))
    photo.paste((250, 10, 200), (300, 200, 340, 230))  # the region that fooled the model: magenta
    ref = PhotoRef("corpus:grass/x", "corpus", str(tmp_path / "x.png"), False, False)
    hard = HardNegative(ref, (300 / 400, 200 / 300, 340 / 400, 230 / 300), 0.9)
    crop = crop_around(np.random.default_rng(seed), photo, hard, 128, 96)
    assert crop.shape == (96, 128, 3) and crop.dtype == np.float32
    red_minus_green = crop[..., 0] - crop[..., 1]  # colour jitter keeps magenta far from grass green
    assert (red_minus_green > 0.3).mean() > 0.005


@pytest.mark.parametrize("seed", range(3))
def test_a_hard_negative_as_tall_as_the_photo_is_cropped_without_a_negative_offset(tmp_path, seed):
    # 106 px high at 1000:700: the crop's height 106 * (1000/700) / (1000/700) rounds to 106.00000000000001,
    # which once put the crop's top at -1e-14 and PIL refused the box (a prepare run died on it).
    photo = Image.new("RGB", (400, 106), (40, 120, 40))
    ref = PhotoRef("corpus:wide/x", "corpus", str(tmp_path / "x.png"), False, False)
    hard = HardNegative(ref, (0.0, 0.0, 1.0, 1.0), 0.9)  # the whole photo fooled the model
    crop = crop_around(np.random.default_rng(seed), photo, hard, 1000, 700)
    assert crop.shape == (700, 1000, 3) and np.isfinite(crop).all()


def test_prepare_crops_backgrounds_around_mined_regions(tmp_path):
    from wmcore.data.prepare import run_prepare

    corpus = make_corpus(tmp_path / "corpus", {"train": 4})
    grass = np.random.default_rng(3).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(grass).save(corpus / "train" / "pic0.png")  # a larger photo: room for crops
    (tmp_path / "hn.jsonl").write_text(json.dumps({"file": "train/pic0.png", "box": [0.4, 0.4, 0.5, 0.5]}) + "\n")
    params = validate({
        "paths": {"corpus": str(corpus), "hard_negatives": str(tmp_path / "hn.jsonl"),
                  "prepared": str(tmp_path / "prepared")},
        "prepare": {"n_train": 6, "n_val": 1, "n_test": 1, "n_test_heldout": 0, "heldout_style_share": 0.0,
                    "min_side": 64, "max_side": 96, "background_sources": ["corpus"], "procedural_share": 0.0,
                    "hard_negative_share": 1.0, "min_background_side": 16},
    })  # fmt: skip
    run_prepare(params)
    rows = [json.loads(x) for x in (tmp_path / "prepared" / "manifest.jsonl").read_text().splitlines()]
    assert rows and all(r["source"] == "corpus:grass/pic0" for r in rows)
    assert all(r["hard_negative"] for r in rows)  # every background was cropped around the mined box
    stats = json.loads((tmp_path / "prepared" / "stats.json").read_text())
    assert stats["hard_negative"] == {s: sum(r["split"] == s for r in rows) for s in stats["hard_negative"]}
    plain = params.model_copy(update={"prepare": params.prepare.model_copy(update={"hard_negative_share": 0.0}),
                                      "paths": params.paths.model_copy(update={"prepared": str(tmp_path / "plain")})})
    run_prepare(plain)
    rows = [json.loads(x) for x in (tmp_path / "plain" / "manifest.jsonl").read_text().splitlines()]
    assert rows and not any(r["hard_negative"] for r in rows)
