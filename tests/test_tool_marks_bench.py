"""bench/tool_marks.py: each tool's mark lands where its truth says, faint marks are left out, the rows count right."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench.tool_marks import EXTRA_RECIPES, RECIPES, build_set, change, detector_row, folder_photos
from wmcore.evaluate.samples import EvalSample
from wmcore.evaluate.score import score_maps

BINS = 11


def photo(h: int = 240, w: int = 320, seed: int = 0, grey: int = 110) -> np.ndarray:
    """A grey photo with texture (at 110 white and black marks show, matplotlib's grey one barely)."""
    rng = np.random.default_rng(seed)
    return np.clip(grey + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_changes_the_photo_exactly_where_its_opacity_is(name):
    clean = photo()
    marked, opacity = RECIPES[name](np.random.default_rng(1), clean)
    assert marked.shape == clean.shape and marked.dtype == np.uint8 and opacity.shape == clean.shape[:2]
    assert opacity.min() >= 0.0 and opacity.max() <= 1.0
    mask = opacity > 0.05
    assert 0.001 < mask.mean() < 0.5  # a mark, not the whole picture
    diff = np.abs(marked.astype(int) - clean.astype(int)).max(-1)
    assert (diff[opacity == 0] <= 1).all()  # untouched outside the mark (rounding aside)
    assert diff[opacity > 0.2].mean() > 8  # and visibly changed on it
    assert change(clean, marked, mask) > 0.02


def test_build_set_writes_clean_and_marked_pairs_and_leaves_faint_marks_out(tmp_path):
    sources = []
    for i in range(3):
        Image.fromarray(photo(seed=i)).save(tmp_path / f"p{i}.png")
        sources.append(EvalSample(f"p{i}", tmp_path / f"p{i}.png", None, False))
    samples, dropped = build_set(sources, tmp_path / "set", 0.05, 0.04)
    assert dropped == 0 and [s.tags[0] for s in samples] == ["clean", *list(RECIPES)[:1], "clean", list(RECIPES)[1],
                                                             "clean", list(RECIPES)[2]]  # fmt: skip
    for s in samples:
        assert s.image.suffix == ".jpg" and s.image.is_file()
        assert (s.mask is None) == (not s.has_watermark)
    mask = np.asarray(Image.open(samples[1].mask)) > 0
    assert mask.any() and set(np.unique(np.asarray(Image.open(samples[1].mask)))) <= {0, 255}
    none, dropped = build_set(sources, tmp_path / "faint", 0.05, 1.0, draws=2)  # no mark changes pixels by 100%
    assert dropped == 3 and all(not s.has_watermark for s in none)


def test_detector_row_counts_found_marks_and_flagged_clean_photos(tmp_path):
    sources = []
    for i in range(4):
        Image.fromarray(photo(seed=i, grey=170)).save(tmp_path / f"p{i}.png")  # every recipe's mark shows
        sources.append(EvalSample(f"p{i}", tmp_path / f"p{i}.png", None, False))
    samples, dropped = build_set(sources, tmp_path / "set", 0.05, 0.04)
    assert dropped == 0 and len(samples) == 8
    truth = {s.image.name: (np.asarray(Image.open(s.mask)) > 0) if s.mask else None for s in samples}
    order = iter(samples)

    def oracle(images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The truth for marked photos (the first one found only in its left half), one pixel on each clean photo."""
        out = []
        for image in images:
            s = next(order)
            probs = np.zeros(image.shape[:2], np.float32)
            if s.mask is None:
                probs[0, 0] = 1.0
            else:
                probs[truth[s.image.name]] = 1.0
                if s.tags[0] == list(RECIPES)[0]:
                    probs[:, :] = 0.0  # missed entirely
            out.append({"p": probs})
        return out

    split = score_maps(samples, oracle, ("p",), BINS, 1, 0, name="t")["p"]
    row = detector_row(split, 0.5, 0.0, BINS, False)
    assert row["marked_found"] == 0.75 and row["clean_flagged"] == "4 of 4"
    assert row["by_recipe"][list(RECIPES)[0]]["found"] == 0.0 and row["by_recipe"][list(RECIPES)[0]]["recall"] == 0.0
    assert row["by_recipe"][list(RECIPES)[1]] == {"n_images": 1, "f1": 1.0, "precision": 1.0, "recall": 1.0, "found": 1.0}
    assert row["precision"] < 1.0 and row["clean_fp_area"] > 0
    assert row["found_by_photo"] == {"short side < 400 px": "0.75 of 4", "short side >= 400 px": "-",
                                     "long side > 1536 px": "-", "screenshots and pages": "-", "other pictures": "0.75 of 4",
                                     "other pictures, short side < 400 px": "0.75 of 4",
                                     "other pictures, short side >= 400 px": "-"}  # fmt: skip


def test_every_recipe_marks_each_photo_once_per_recipe_from_a_folder_with_its_index(tmp_path):
    folder = tmp_path / "fullres" / "val"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(photo(seed=1, grey=170)).save(folder / "b.png")
    Image.fromarray(photo(seed=2, grey=170)).save(folder / "sub" / "a.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "fullres" / "val.index.json").write_text(json.dumps([{"original": "a.jpg", "category": "animal"}]))
    photos = folder_photos(folder)
    assert [(p.image.name, p.background_kind, p.mask) for p in photos] == [("b.png", None, None),
                                                                           ("a.jpg", "animal", None)]  # fmt: skip
    samples, dropped = build_set(photos, tmp_path / "set", 0.05, 0.04, every_recipe=True)
    assert dropped == 0 and len(samples) == 2 * (1 + len(RECIPES))
    assert [s.tags[0] for s in samples[: 1 + len(RECIPES)]] == ["clean", *RECIPES]
    assert all(s.background_kind == "animal" for s in samples[1 + len(RECIPES) :])
    masks = [np.asarray(Image.open(s.mask)) > 0 for s in samples if s.mask]
    assert all(m.any() for m in masks) and not np.array_equal(masks[0], masks[1])  # each copy its own mark


def test_faint_centre_is_a_light_barely_opaque_line_drawn_only_when_asked(tmp_path):
    clean = photo(grey=60)  # a dark photo: a light mark at 8-20% still changes its pixels by ~0.04 or more
    marked, opacity = EXTRA_RECIPES["opencv_faint_centre"](np.random.default_rng(3), clean)
    assert 0.08 <= opacity.max() <= 0.2 and (opacity > 0.05).mean() > 0.001
    on = opacity > 0.05
    assert (marked[on].astype(int) - clean[on].astype(int)).mean() > 0  # lighter, never darker
    Image.fromarray(clean).save(tmp_path / "p.png")
    sources = [EvalSample("p", tmp_path / "p.png", None, False)]
    samples, dropped = build_set(sources, tmp_path / "set", 0.05, 0.02, recipes=["opencv_faint_centre"])
    assert dropped == 0 and [s.tags[0] for s in samples] == ["clean", "opencv_faint_centre"]
    assert "opencv_faint_centre" not in RECIPES  # the default set is drawn as before


def test_ai_label_is_small_light_text_near_a_corner_drawn_only_when_asked(tmp_path):
    clean = photo(300, 400, grey=70)
    for seed in range(6):
        marked, opacity = EXTRA_RECIPES["matplotlib_ai_label"](np.random.default_rng(seed), clean)
        on = opacity > 0.05
        assert 0.0005 < on.mean() < 0.03  # a label, a few hundred pixels
        ys, xs = np.nonzero(on)
        near_x = xs.max() < 0.45 * clean.shape[1] or xs.min() > 0.55 * clean.shape[1]
        near_y = ys.max() < 0.2 * clean.shape[0] or ys.min() > 0.8 * clean.shape[0]
        assert near_x and near_y  # in a corner, not across the picture
        text = opacity > 0.4  # the glyphs (a shadow stays under 0.35)
        assert (marked[text].astype(int) - clean[text].astype(int)).mean() > 40  # white on a dark photo
        diff = np.abs(marked.astype(int) - clean.astype(int)).max(-1)
        assert (diff[opacity == 0] <= 1).all()
    Image.fromarray(clean).save(tmp_path / "p.png")
    sources = [EvalSample("p", tmp_path / "p.png", None, False)]
    samples, dropped = build_set(sources, tmp_path / "set", 0.05, 0.02, recipes=["matplotlib_ai_label"])
    assert dropped == 0 and [s.tags[0] for s in samples] == ["clean", "matplotlib_ai_label"]
    assert "matplotlib_ai_label" not in RECIPES


def test_opaque_credit_is_fully_opaque_text_with_a_dark_edge_along_the_bottom():
    clean = photo(300, 400, grey=128)
    for seed in range(6):
        marked, opacity = EXTRA_RECIPES["matplotlib_opaque_credit"](np.random.default_rng(seed), clean)
        on = opacity > 0.05
        assert 0.001 < on.mean() < 0.1
        assert opacity.max() > 0.99  # opaque, unlike every other recipe
        ys, _ = np.nonzero(on)
        assert ys.min() > 0.75 * clean.shape[0]  # along the bottom
        lum = marked.astype(int).mean(-1)
        assert (lum[opacity > 0.99] > 170).any() and (lum[on] < 60).any()  # white or yellow glyphs, a dark edge
        diff = np.abs(marked.astype(int) - clean.astype(int)).max(-1)
        assert (diff[opacity == 0] <= 1).all()
    assert "matplotlib_opaque_credit" not in RECIPES
