"""Native views of the corpus's train pictures: backgrounds at camera detail and mining ground through it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_calibration import make_corpus
from tests.test_mine import HotCorner
from tests.test_native_views import corpus_with_package  # noqa: F401 (fixture)
from wmcore.config import validate
from wmcore.data.backgrounds import (
    HardNegative,
    discover_backgrounds,
    hard_negative_view,
    load_hard_negatives,
    native_box,
    photo_view,
    window_in_stored,
)
from wmcore.data.native_views import build_native_views
from wmcore.errors import WmError
from wmcore.evaluate import mine
from wmcore.evaluate.mine import mine_hard_negatives

MAGENTA = (230, 20, 200)


def add_native_views(corpus: Path, native: Path, files: list[str]) -> None:
    """Give `files` of a make_corpus corpus a source twice their stored size and a native view of its
    centre half (window (0.25, 0.25, 0.75, 0.75) of the stored copy), painted magenta so a test can tell
    which was drawn (the stored copies are grey-ish noise)."""
    rows = [json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines()]
    views = []
    for row in rows:
        if row["file"] not in files:
            continue
        w, h = row["width"], row["height"]
        row |= {"source_width": 2 * w, "source_height": 2 * h, "crop": None}
        rel = f"train/{Path(row['file']).stem}.webp"
        (native / "train").mkdir(parents=True, exist_ok=True)
        noise = np.random.default_rng(len(views)).integers(-25, 25, (h, w, 3))
        Image.fromarray(np.clip(np.array(MAGENTA) + noise, 0, 255).astype(np.uint8)).save(native / rel, "WEBP",
                                                                                          lossless=True)
        views.append({"file": rel, "view_of": row["file"], "split": "train", "category": row["category"],
                      "crop": [w // 2, h // 2, w // 2 + w, h // 2 + h], "width": w, "height": h})  # fmt: skip
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (native / "manifest.jsonl").write_text("".join(json.dumps(v) + "\n" for v in views))


def test_train_views_are_built_into_a_folder_of_their_own(corpus_with_package, tmp_path):  # noqa: F811
    corpus, downloads, pictures = corpus_with_package
    summary = build_native_views(corpus, tmp_path / "native-train", downloads, side=512, splits=("train",))
    assert summary["by_split"] == {"train": 1}
    (row,) = [json.loads(x) for x in (tmp_path / "native-train" / "manifest.jsonl").read_text().splitlines()]
    assert row["view_of"] == "train/pics--train.webp" and row["crop"] == [544, 194, 1056, 706]
    view = np.asarray(Image.open(tmp_path / "native-train" / row["file"]).convert("RGB"), np.int16)
    assert np.abs(view - pictures["train.png"][194:706, 544:1056]).mean() < 6  # its own pixels (lossy WebP)
    assert "Training uses them" in (tmp_path / "native-train" / "README.md").read_text()
    with pytest.raises(WmError, match="train alone"):
        build_native_views(corpus, tmp_path / "mixed", downloads, splits=("train", "val"))
    assert not (tmp_path / "mixed").exists()


def test_a_views_window_in_its_stored_copy_counts_the_rows_own_view_box():
    row = {"crop": [100, 50, 1400, 950], "source_width": 1300, "source_height": 900}
    assert window_in_stored({"crop": [238, 50, 1262, 950]}, row) == pytest.approx((138 / 1300, 0.0, 1162 / 1300, 1.0))
    assert window_in_stored({"crop": [10, 20, 30, 40]}, {**row, "crop": None}) == pytest.approx(
        (10 / 1300, 20 / 900, 30 / 1300, 40 / 900))


def test_native_box_maps_into_the_window_and_refuses_boxes_outside_it():
    window = (0.25, 0.25, 0.75, 0.75)
    assert native_box((0.25, 0.5, 0.5, 0.75), window) == pytest.approx((0.0, 0.5, 0.5, 1.0))
    assert native_box((0.1, 0.5, 0.3, 0.6), window) is None  # starts left of the window
    assert native_box((0.5, 0.5, 0.9, 0.6), window) is None  # ends right of it


def catalog_with_views(tmp_path: Path):
    corpus = make_corpus(tmp_path / "corpus", {"train": 3})
    add_native_views(corpus, tmp_path / "native", ["train/pic0.png", "train/pic2.png"])
    p = validate({"prepare": {"background_sources": ["corpus"], "min_background_side": 16}}).prepare
    return corpus, discover_backgrounds(p, corpus, tmp_path / "native")


def test_the_catalog_knows_each_train_photos_view_and_where_it_lies(tmp_path):
    _, catalog = catalog_with_views(tmp_path)
    by_id = {r.id: r for r in catalog.photos}
    assert by_id["corpus:grass/pic0"].native.endswith("native/train/pic0.webp")
    assert by_id["corpus:grass/pic0"].window == pytest.approx((0.25, 0.25, 0.75, 0.75))
    assert by_id["corpus:water/pic1"].native == ""  # stored at its own size: no view
    assert catalog.sources["corpus"]["native_views"] == 2


def test_share_zero_draws_no_random_number_and_share_one_always_takes_the_view(tmp_path):
    _, catalog = catalog_with_views(tmp_path)
    with_view, without = catalog.photos[0], catalog.photos[1]
    rng, fresh = np.random.default_rng(5), np.random.default_rng(5)
    assert photo_view(rng, with_view, 0.0) is with_view and photo_view(rng, without, 1.0) is without
    assert rng.random() == fresh.random()  # same stream: share 0 gives the data of a build without views
    chosen = photo_view(rng, with_view, 1.0)
    assert chosen.path == with_view.native and chosen.id == with_view.id  # same picture, held out or not alike


def test_a_hard_negative_mined_on_a_view_is_always_cut_from_it_and_others_only_inside_it(tmp_path):
    _, catalog = catalog_with_views(tmp_path)
    ref = catalog.photos[0]
    mined_there = HardNegative(ref, (0.25, 0.25, 0.375, 0.375), 0.9, native=True)
    got = hard_negative_view(np.random.default_rng(0), mined_there, 0.0)
    assert got.ref.path == ref.native and got.box == pytest.approx((0.0, 0.0, 0.25, 0.25))
    inside = HardNegative(ref, (0.5, 0.5, 0.6, 0.6), 0.9)
    assert hard_negative_view(np.random.default_rng(0), inside, 0.0) is inside
    assert hard_negative_view(np.random.default_rng(0), inside, 1.0).ref.path == ref.native
    outside = HardNegative(ref, (0.0, 0.0, 0.1, 0.1), 0.9)  # not in the view: the stored copy
    assert hard_negative_view(np.random.default_rng(0), outside, 1.0) is outside


def test_mining_the_views_writes_their_regions_in_stored_coordinates(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", {"train": 3, "val": 1})
    add_native_views(corpus, tmp_path / "native", ["train/pic0.png"])
    params = validate({"paths": {"corpus": str(corpus), "corpus_native_train": str(tmp_path / "native"),
                                 "hard_negatives": str(tmp_path / "hn.jsonl"), "pretrained": "unused.pt",
                                 "cache_dir": str(tmp_path / "cache")},
                       "mine": {"native_views": True}})  # fmt: skip
    fake = HotCorner()  # marks the top-left 8x8 px of whatever it sees
    monkeypatch.setattr(mine, "get_predictor", lambda *a, **k: fake)
    summary = mine_hard_negatives(params)
    lines = [json.loads(x) for x in (tmp_path / "hn.jsonl").read_text().splitlines()]
    assert fake.seen == 4 and summary["native_views"] == 1 and summary["native_regions"] == 1
    (native,) = [x for x in lines if x.get("view") == "native"]
    # the view (64 x 48 px) is the centre half of the stored copy: its corner lands at (0.25, 0.25)
    assert native["file"] == "train/pic0.png"
    assert native["box"] == pytest.approx([0.25, 0.25, 0.25 + 8 / 64 / 2, 0.25 + 8 / 48 / 2], abs=1e-5)
    assert summary["fp_area"] == pytest.approx(64 / (48 * 64), abs=1e-6)  # stored copies only
    assert summary["native_fp_area"] == pytest.approx(64 / (48 * 64), abs=1e-6)
    # read back: the native line is cut from the view; without the view here it is left out
    p = validate({"prepare": {"background_sources": ["corpus"], "min_background_side": 16}}).prepare
    with_views = discover_backgrounds(p, corpus, tmp_path / "native").photos
    hard = load_hard_negatives(tmp_path / "hn.jsonl", with_views, corpus)
    assert len(hard) == 4 and sum(h.native for h in hard) == 1
    assert len(load_hard_negatives(tmp_path / "hn.jsonl", discover_backgrounds(p, corpus).photos, corpus)) == 3
    # off by default: the views are not looked at
    fake.seen = 0
    mine_hard_negatives(params.model_copy(update={"mine": params.mine.model_copy(update={"native_views": False})}))
    assert fake.seen == 3


def magenta_share(prepared: Path) -> float:
    """Share of the prepared images' pixels that read magenta (red and blue well above green)."""
    shares = []
    for path in sorted((prepared / "train" / "images").iterdir()):
        img = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
        shares.append(float(((img[..., 0] - img[..., 1] > 0.3) & (img[..., 2] - img[..., 1] > 0.3)).mean()))
    return float(np.mean(shares))


def test_prepare_draws_the_views_for_native_share_of_the_photos_that_have_one(tmp_path):
    from wmcore.data.prepare import run_prepare, summary_table

    corpus = make_corpus(tmp_path / "corpus", {"train": 2})
    add_native_views(corpus, tmp_path / "native", ["train/pic0.png", "train/pic1.png"])

    def build(share: float, name: str) -> float:
        params = validate({
            "paths": {"corpus": str(corpus), "corpus_native_train": str(tmp_path / "native"),
                      "hard_negatives": str(tmp_path / "none.jsonl"), "prepared": str(tmp_path / name)},
            "prepare": {"n_train": 8, "n_val": 1, "n_test": 1, "n_test_heldout": 0, "heldout_style_share": 0.0,
                        "min_side": 48, "max_side": 64, "background_sources": ["corpus"], "procedural_share": 0.0,
                        "clean_share": 1.0, "scene_text_share": 0.0, "min_background_side": 16,
                        "native_share": share},
        })  # fmt: skip
        run_prepare(params)
        rows = [json.loads(x) for x in (tmp_path / name / "manifest.jsonl").read_text().splitlines()]
        stats = json.loads((tmp_path / name / "stats.json").read_text())
        assert stats["native_view"]["train"] == sum(r["native_view"] for r in rows if r["split"] == "train")
        header, train_line = summary_table(stats).splitlines()[:2]
        assert header.split()[-1] == "native" and train_line.split()[-1] == str(stats["native_view"]["train"])
        return magenta_share(tmp_path / name), stats["native_view"]["train"]

    magenta, counted = build(1.0, "native")
    assert magenta > 0.8 and counted == 8  # every train background cut from a (magenta) view, and counted so
    magenta, counted = build(0.0, "stored")
    assert magenta < 0.05 and counted == 0  # the stored noise copies only
