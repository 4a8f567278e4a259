"""Import of an existing images/ + masks/ dataset (CLWD / LVW layout) into the prepared layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wmcore.config import Params, validate
from wmcore.data.importer import mask_to_alpha, split_of
from wmcore.data.prepare import run_prepare
from wmcore.errors import WmError


def params_for(tmp_path: Path, import_dir: Path, **prepare) -> Params:
    group = {"n_train": 1, "n_val": 1, "n_test": 1, "min_side": 64, "max_side": 64,
             "background_sources": ["procedural"], "import_dir": str(import_dir), **prepare}
    return validate({"paths": {"prepared": str(tmp_path / "prepared")}, "prepare": group})


def _image(path: Path, size: tuple[int, int], seed: int) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _mask(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint8), "L").save(path)


@pytest.fixture
def clwd(tmp_path: Path) -> Path:
    """images/ + masks/ with 3 good pairs (0/255, 0/1 and soft masks) and 4 bad cases."""
    root = tmp_path / "clwd"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    box = np.zeros((40, 48), np.uint8)
    box[10:20, 5:30] = 1
    _image(root / "images" / "good255.png", (48, 40), 1)
    _mask(root / "masks" / "good255.png", box * 255)
    _image(root / "images" / "good01.bmp", (48, 40), 2)  # any image extension on either side
    _mask(root / "masks" / "good01.png", box)
    _image(root / "images" / "soft.png", (48, 40), 3)
    _mask(root / "masks" / "soft.png", np.tile(np.arange(48, dtype=np.uint8) * 5, (40, 1)))
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _mask(root / "masks" / "corrupt.png", box)
    _image(root / "images" / "mismatch.png", (48, 40), 4)
    _mask(root / "masks" / "mismatch.png", np.zeros((20, 20), np.uint8))
    _image(root / "images" / "nomask.png", (48, 40), 5)
    _mask(root / "masks" / "orphan.png", box)
    return root


def test_import_reports_bad_pairs_and_imports_the_rest(tmp_path, clwd):
    stats = run_prepare(params_for(tmp_path, clwd, import_val_share=0.0, import_test_share=0.0))
    report = stats["import"]
    reasons = {s["name"]: s["reason"] for s in report["skipped"]}
    assert reasons.keys() == {"corrupt.png", "mismatch.png", "nomask.png", "orphan.png"}
    assert reasons["corrupt.png"].startswith("corrupt image")
    assert reasons["mismatch.png"].startswith("size mismatch: image 48x40, mask 20x20")
    assert "no mask" in reasons["nomask.png"] and "without an image" in reasons["orphan.png"]
    assert report["imported"] == 3 and report["found"] == 6
    assert report["mask_kinds"] == {"binary": 1, "binary01": 1, "soft": 1}
    assert stats["counts"]["train"] == 1 + 3 and stats["sources"]["import:clwd"] == 3


def _imported_rows(tmp_path: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in (tmp_path / "prepared" / "manifest.jsonl").read_text().splitlines()]
    return {r["id"].split("_")[1]: r for r in rows if r["source"] == "import:clwd"}


def _load(tmp_path: Path, rel: str) -> np.ndarray:
    with Image.open(tmp_path / "prepared" / rel) as im:
        return np.asarray(im)


def test_imported_masks_are_binarised_and_soft_masks_kept_as_alpha(tmp_path, clwd):
    run_prepare(params_for(tmp_path, clwd, mask_alpha_threshold=0.5))
    rows = _imported_rows(tmp_path)
    for name in ("good255", "good01"):
        mask = _load(tmp_path, rows[name]["mask"])
        assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 10 * 25
        assert rows[name]["has_watermark"] and rows[name]["styles"] == ["imported"]
    soft_alpha = _load(tmp_path, rows["soft"]["alpha"])
    assert np.array_equal(soft_alpha[0], np.arange(48) * 5)  # soft values kept as they were
    assert np.array_equal(_load(tmp_path, rows["soft"]["mask"]), np.where(soft_alpha / 255 > 0.5, 255, 0))
    image = _load(tmp_path, rows["soft"]["image"])
    with Image.open(clwd / "images" / "soft.png") as original:
        assert np.array_equal(image, np.asarray(original.convert("RGB")))
    assert rows["soft"]["sha256"] == hashlib.sha256((tmp_path / "prepared" / rows["soft"]["image"]).read_bytes()).hexdigest()


@pytest.mark.parametrize(("val", "test", "expected"), [(0.0, 0.0, "train"), (0.0, 0.999, "test"), (0.999, 0.0, "val")])
def test_split_shares(val, test, expected):
    assert {split_of(f"name{i}", val, test) for i in range(20)} == {expected}


def test_split_is_a_stable_hash_of_the_name():
    u = int(hashlib.sha256(b"photo_0001").hexdigest()[:8], 16) / 2**32
    expected = "test" if u < 0.3 else "val" if u < 0.6 else "train"
    assert split_of("photo_0001", 0.3, 0.3) == expected
    splits = [split_of(f"img{i}", 0.2, 0.2) for i in range(400)]
    assert 40 < splits.count("test") < 120 and 40 < splits.count("val") < 120


@pytest.mark.parametrize(
    ("values", "kind", "scaled"),
    [([0, 1], "binary01", [0, 255]), ([0, 255], "binary", [0, 255]), ([0, 7, 255], "soft", [0, 7, 255]), ([0], "binary", [0])],
)
def test_mask_kinds(values, kind, scaled):
    alpha, got = mask_to_alpha(np.array([values], np.uint8))
    assert got == kind and alpha.tolist() == [scaled]


def test_missing_masks_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    with pytest.raises(WmError) as err:
        run_prepare(params_for(tmp_path, tmp_path / "ds"))
    assert str(tmp_path / "ds" / "masks") in str(err.value) and "\n" not in str(err.value)
