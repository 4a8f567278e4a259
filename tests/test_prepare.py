"""`wm prepare`: the synthetic watermark dataset generator (layout, determinism, ground truth, errors)."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image

from wmcore.config import Params, WatermarkStyle, validate
from wmcore.data import prepare as prepare_module
from wmcore.data.backgrounds import discover_backgrounds
from wmcore.data.compose import render_scene_text
from wmcore.data.fonts import FontFace, faces_for
from wmcore.data.generator import GeneratorContext, generate_sample
from wmcore.data.phrases import make_ai_label, make_block, make_phrase, make_scene_phrase, make_stamp_phrase
from wmcore.data.prepare import run_prepare
from wmcore.data.render import STYLES
from wmcore.errors import WmError


def tiny_params(root: Path, **prepare) -> Params:
    """Params for a fast run: 8/2/2 samples of 64..128 px, written to root/prepared (no held-out split:
    tests/test_heldout.py covers it)."""
    group = {"n_train": 8, "n_val": 2, "n_test": 2, "n_test_heldout": 0, "min_side": 64, "max_side": 128,
             "background_sources": ["skimage", "procedural"], **prepare}
    return validate({"paths": {"prepared": str(root / "prepared")}, "prepare": group})


def read_manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def load(root: Path, rel: str) -> np.ndarray:
    with Image.open(root / rel) as im:
        return np.asarray(im)


def dataset_files(root: Path) -> dict[str, bytes]:
    """Every file of a prepared dataset except stats.json (it holds timings)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "stats.json"}


def test_same_params_give_byte_identical_datasets_in_process_and_in_a_pool(tmp_path):
    first = run_prepare(tiny_params(tmp_path / "a", workers=0))
    second = run_prepare(tiny_params(tmp_path / "b", workers=2))
    a, b = dataset_files(tmp_path / "a" / "prepared"), dataset_files(tmp_path / "b" / "prepared")
    assert len(a) == 3 * 12 + 2  # 3 PNGs per sample + manifest + contact sheet
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert first["counts"] == second["counts"] == {"train": 8, "val": 2, "test": 2, "total": 12}


def test_layout_manifest_and_mask_rule(tmp_path):
    params = tiny_params(tmp_path, clean_share=0.25, mask_alpha_threshold=0.2)
    stats = run_prepare(params)
    root = tmp_path / "prepared"
    rows = read_manifest(root)
    assert [r["split"] for r in rows] == ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    for row in rows:
        image, mask, alpha = load(root, row["image"]), load(root, row["mask"]), load(root, row["alpha"])
        assert image.shape == (row["height"], row["width"], 3) and image.dtype == np.uint8
        assert 64 <= max(row["width"], row["height"]) <= 128
        assert mask.shape == alpha.shape == image.shape[:2]
        # The rule the docstring states: 255 exactly where the stored alpha / 255 > threshold.
        assert np.array_equal(mask, np.where(alpha / 255.0 > 0.2, 255, 0))
        assert row["wm_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert row["has_watermark"] == bool(mask.any())
        assert row["sha256"] == hashlib.sha256((root / row["image"]).read_bytes()).hexdigest()
        assert row["styles"] and row["source"].split(":")[0] in ("skimage", "procedural")
    assert stats["counts"]["total"] == len(rows)
    assert stats["licenses"]["skimage"] and stats["licenses"]["procedural"]
    assert json.loads((root / "stats.json").read_text())["counts"] == stats["counts"]


def test_clean_samples_have_empty_masks(tmp_path):
    stats = run_prepare(tiny_params(tmp_path, clean_share=1.0))
    root = tmp_path / "prepared"
    for row in read_manifest(root):
        assert row["styles"][0] == "clean" and not row["has_watermark"]
        assert not load(root, row["mask"]).any() and not load(root, row["alpha"]).any()
    assert stats["clean"] == {"train": 8, "val": 2, "test": 2}


def _context(params: Params) -> GeneratorContext:
    return GeneratorContext(params.prepare, params.base.seed, discover_backgrounds(params.prepare))


@pytest.mark.parametrize("index", range(4))
def test_scene_text_is_in_the_image_but_never_in_the_mask(tmp_path, index):
    common = {"clean_share": 1.0, "jpeg_share": 0.0}
    with_text = generate_sample(_context(tiny_params(tmp_path, scene_text_share=1.0, **common)), "train", index)
    without = generate_sample(_context(tiny_params(tmp_path, scene_text_share=0.0, **common)), "train", index)
    scene = with_text.scene_alpha > 0.5
    assert scene.sum() > 20  # real, opaque scene text was drawn
    assert with_text.scene_text
    # Same background stream: the images differ exactly because of the burned-in scene text ...
    changed = np.abs(with_text.image.astype(int) - without.image.astype(int)).max(axis=2) > 0
    assert changed[scene].mean() > 0.5 and not changed[with_text.scene_alpha == 0].any()
    # ... which never enters the ground truth.
    assert not with_text.mask.any() and not with_text.alpha.any()


def test_scene_text_is_opaque():
    layer, kinds = render_scene_text(np.random.default_rng(3), 160, 120)
    assert kinds and set(kinds) <= {"sign", "subtitle", "caption", "label", "document"}
    assert layer.alpha.max() > 0.99


def test_scene_text_kinds_limit_what_is_drawn_and_all_of_them_is_the_default():
    seen = set()
    for seed in range(40):
        _, kinds = render_scene_text(np.random.default_rng(seed), 200, 150, ["label", "sign"])
        seen.update(kinds)
    assert seen == {"label", "sign"}  # never a subtitle, a caption bar or a page block
    a, kinds_a = render_scene_text(np.random.default_rng(5), 200, 150)
    b, kinds_b = render_scene_text(np.random.default_rng(5), 200, 150, ["subtitle", "document", "sign", "label"])
    assert kinds_a == kinds_b and np.array_equal(a.alpha, b.alpha)  # all kinds, in any order: the same draws


@pytest.mark.parametrize(
    "maker", [make_phrase, make_ai_label, make_stamp_phrase, make_scene_phrase, lambda rng: make_block(rng, 3)]
)
def test_phrases_with_cjk_characters_get_a_face_that_has_them(maker):
    rng = np.random.default_rng(0)
    for _ in range(200):
        phrase = maker(rng)
        if any(ord(c) > 0x2E80 for c in phrase.text):
            faces = faces_for(phrase.script)
            chars = {c for c in phrase.text if not c.isspace()}
            assert phrase.script != "latin" and faces and all(chars <= face_chars(f) for f in faces), phrase


@functools.cache
def face_chars(face: FontFace) -> frozenset[str]:
    """The characters a face has glyphs for (its cmap)."""
    return frozenset(chr(c) for c in TTFont(face.path, fontNumber=face.index, lazy=True).getBestCmap())


def test_style_registry_matches_the_config():
    assert set(STYLES) == set(get_args(WatermarkStyle))


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_draws_a_visible_tagged_mark(tmp_path, style):
    params = tiny_params(tmp_path, clean_share=0.0, style_weights={style: 1.0}, multi_mark_share=0.0,
                         opacity_min=0.5, background_sources=["procedural"])
    ctx = _context(params)
    for index in range(3):
        sample = generate_sample(ctx, "val", index)
        assert sample.styles[0] == style
        assert sample.mask.any() and (sample.mask > 0).mean() < 0.95


def test_credit_lines_are_opaque_edged_and_at_an_edge_whatever_the_opacity_range(tmp_path):
    """The credit style draws at full strength even where prepare.opacity_max is low, with a dark edge
    (stroke or shadow) around light text, in a band along the bottom or the top; other styles keep the range."""
    params = tiny_params(tmp_path, clean_share=0.0, multi_mark_share=0.0, opacity_min=0.1, opacity_max=0.3,
                         style_weights={"credit": 1.0}, background_sources=["procedural"], jpeg_share=0.0,
                         min_side=480, max_side=640)
    ctx = _context(params)
    for index in range(6):
        sample = generate_sample(ctx, "train", index)
        assert sample.styles[0] == "credit"
        assert sample.alpha.max() >= round(0.85 * 255 * 0.8), sample.styles  # 0.3 would cap it at 77
        rows = np.flatnonzero(sample.mask.any(axis=1)) / sample.mask.shape[0]
        assert rows.max() - rows.min() < 0.25 and (rows.min() > 0.6 or rows.max() < 0.4), (rows.min(), rows.max())
    params = tiny_params(tmp_path, clean_share=0.0, multi_mark_share=0.0, opacity_min=0.1, opacity_max=0.3,
                         style_weights={"corner": 1.0}, background_sources=["procedural"], jpeg_share=0.0)
    assert all(generate_sample(_context(params), "train", i).alpha.max() <= 0.3 * 255 + 1 for i in range(4))


def test_ui_backgrounds_draw_each_word_in_a_face_that_has_its_glyphs(monkeypatch):
    """A CJK scene word on a procedural UI panel gets a CJK face, not the Latin one (which draws empty boxes)."""
    import wmcore.data.procedural as procedural
    from wmcore.data.phrases import Phrase

    words = iter([Phrase("停车场", "sc", "scene"), Phrase("EXIT", "latin", "scene")] * 20)
    monkeypatch.setattr(procedural, "make_scene_phrase", lambda rng: next(words))
    used: list[tuple[FontFace, str]] = []
    load = procedural.load_font
    monkeypatch.setattr(procedural, "load_font", lambda face, px: used.append(face) or load(face, px))
    for seed in range(6):
        procedural.render_procedural("ui", np.random.default_rng(seed), 400, 300)
    drawn = list(zip(used, ["停车场", "EXIT"] * 20, strict=False))
    assert {w for _, w in drawn} == {"停车场", "EXIT"}
    for face, word in drawn:
        assert set(word) <= face_chars(face), (face.name, word)


def test_mark_sizes_are_relative_to_the_image(tmp_path):
    """A corner mark covers a similar share of a small and a large image (not a fixed pixel size)."""
    shares = []
    for side in (320, 960):
        params = tiny_params(tmp_path, min_side=side, max_side=side, clean_share=0.0, multi_mark_share=0.0,
                             style_weights={"corner": 1.0}, background_sources=["procedural"])
        ctx = _context(params)
        shares.append(np.mean([generate_sample(ctx, "train", i).mask.mean() / 255 for i in range(8)]))
    assert 0.5 < shares[1] / shares[0] < 2.0, shares


def test_stats_list_skipped_backgrounds_and_sources(tmp_path):
    stats = run_prepare(tiny_params(tmp_path))
    skipped = {Path(s["path"]).name: s["reason"] for s in stats["backgrounds_skipped"]["files"]}
    assert "synthetic" in skipped["phantom.png"] and "too small" in skipped["microaneurysms.png"]
    assert stats["backgrounds_used"]["skimage"] >= 15 and stats["backgrounds_used"]["procedural"] == 7
    assert sum(stats["source_groups"].values()) == 12


def _photo(path: Path, size: tuple[int, int], seed: int) -> None:
    """A smooth random colour picture (photo-like: many grey levels), saved at `path`."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)


def test_user_folder_is_searched_recursively_and_bad_files_are_skipped(tmp_path):
    user = tmp_path / "mine"
    (user / "trip").mkdir(parents=True)
    _photo(user / "a.png", (200, 160), 1)
    _photo(user / "trip" / "b.jpg", (180, 200), 2)
    _photo(user / "tiny.png", (40, 30), 3)
    (user / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    stats = run_prepare(tiny_params(tmp_path, background_sources=["user"], user_backgrounds=str(user)))
    assert set(stats["source_groups"]) == {"user"}
    assert set(stats["sources"]) <= {"user:a", "user:trip/b"}
    reasons = {Path(s["path"]).name: s["reason"] for s in stats["backgrounds_skipped"]["files"]}
    assert reasons.keys() == {"tiny.png", "broken.jpg"}
    assert "too small" in reasons["tiny.png"] and "unreadable" in reasons["broken.jpg"]


@pytest.mark.parametrize("case", ["missing", "empty", "only_bad"])
def test_a_missing_or_empty_user_folder_is_a_one_line_error_naming_it(tmp_path, case):
    folder = tmp_path / "photos"
    if case != "missing":
        folder.mkdir()
    if case == "only_bad":
        (folder / "x.png").write_bytes(b"garbage")
    params = tiny_params(tmp_path, background_sources=["user", "procedural"], user_backgrounds=str(folder))
    with pytest.raises(WmError) as err:
        run_prepare(params)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "prepared").exists()


def test_no_background_at_all_is_a_one_line_error_naming_the_paths(tmp_path, monkeypatch):
    nowhere = [str(tmp_path / "no-backgrounds"), str(tmp_path / "no-wallpapers")]
    monkeypatch.setattr("wmcore.data.backgrounds.SYSTEM_FOLDERS", tuple(nowhere))
    with pytest.raises(WmError) as err:
        run_prepare(tiny_params(tmp_path, background_sources=["system"]))
    assert all(path in str(err.value) for path in nowhere) and "\n" not in str(err.value)


def test_contact_sheet_shows_sixteen_varied_samples(tmp_path):
    stats = run_prepare(tiny_params(tmp_path, n_train=20))
    root = tmp_path / "prepared"
    with Image.open(root / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 1000 and sheet.height > 600
    shown = stats["contact_sheet_ids"]
    assert len(shown) == len(set(shown)) == 16
    rows = {r["id"]: r for r in read_manifest(root)}
    assert len({rows[i]["styles"][0] for i in shown}) >= 5
    assert any(not rows[i]["has_watermark"] for i in shown)


def test_an_interrupted_run_keeps_the_old_dataset_and_resumes(tmp_path, monkeypatch):
    root = tmp_path / "prepared"
    run_prepare(tiny_params(tmp_path, n_train=4))
    old = dataset_files(root)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "write_contact_sheet", crash)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(tiny_params(tmp_path))
    assert dataset_files(root) == old  # the old dataset is untouched
    monkeypatch.undo()
    stats = run_prepare(tiny_params(tmp_path))
    assert stats["resumed"] == 12
    assert dataset_files(root) == dataset_files(_fresh(tmp_path))
    assert not list(tmp_path.glob(".prepared.*"))


def _fresh(tmp_path: Path) -> Path:
    run_prepare(tiny_params(tmp_path / "fresh"))
    return tmp_path / "fresh" / "prepared"
