"""`wm prepare` importing a dataset (images/ + masks/) full of faults: the good pairs go in, each bad file is named.

Documented mask rule (wmcore/data/importer.py): 0/255 masks are kept, 0/1 masks are scaled to
0/255, any other values are a soft mask: kept as the alpha and binarised at
prepare.mask_alpha_threshold. Faults: a mask of another size, a missing mask, a mask without an
image, two images (or masks) with one name, an undecodable image, and an import folder without
images. Training on a split without rows is in test_training_faults.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from tests.reliability.wm_process import cli_args
from wmcore.cli import main

BOX = np.zeros((40, 48), np.uint8)
BOX[10:20, 5:30] = 1


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 48)) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint8), "L").save(path)


def faulty_import_dir(root: Path) -> dict[str, str]:
    """Write the dataset; returns {file name: start of its skip reason} of the files that must be skipped."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _image(root / "images" / "binary.png", 1)
    _mask(root / "masks" / "binary.png", BOX * 255)
    _image(root / "images" / "zero_one.jpg", 2)
    _mask(root / "masks" / "zero_one.png", BOX)
    _image(root / "images" / "soft.png", 3)
    _mask(root / "masks" / "soft.png", np.tile((np.arange(48) * 5).astype(np.uint8), (40, 1)))  # 0..235
    _image(root / "images" / "mismatch.png", 4)
    _mask(root / "masks" / "mismatch.png", np.zeros((20, 24), np.uint8))
    _image(root / "images" / "no_mask.png", 5)
    _mask(root / "masks" / "orphan.png", BOX)
    _image(root / "images" / "twice.png", 6)
    _image(root / "images" / "twice.webp", 7)  # same stem: which one was meant?
    _mask(root / "masks" / "twice.png", BOX)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    _mask(root / "masks" / "broken.png", BOX)
    return {
        "mismatch.png": "size mismatch: image 48x40, mask 24x20",
        "no_mask.png": "no mask with this stem in masks/",
        "orphan.png": "mask without an image",
        "twice.webp": "duplicate image stem (already have twice.png)",
        "broken.png": "corrupt image",
    }


def prepare_sets(tmp_path: Path, import_dir: Path) -> list[str]:
    """One generated sample per split (procedural backgrounds, 64 px) plus the import, all to train."""
    return [
        f"paths.prepared={tmp_path / 'prepared'}", f"paths.cache_dir={tmp_path / 'cache'}",
        "prepare.n_train=1", "prepare.n_val=1", "prepare.n_test=1", "prepare.n_test_heldout=0",
        "prepare.min_side=64", "prepare.max_side=64", "prepare.background_sources=[procedural]",
        f"prepare.import_dir={import_dir}", "prepare.import_val_share=0.0", "prepare.import_test_share=0.0",
        "prepare.mask_alpha_threshold=0.5",
    ]  # fmt: skip


def test_import_keeps_good_pairs_and_names_every_bad_file(tmp_path, capsys, caplog):
    import_dir = tmp_path / "dataset"
    bad = faulty_import_dir(import_dir)
    with caplog.at_level(logging.WARNING, logger="wmcore"):
        assert main(cli_args("prepare", sets=prepare_sets(tmp_path, import_dir))) == 0
    assert f"{len(bad)} files of prepare.import_dir skipped (reasons in stats.json)" in capsys.readouterr().out
    stats = json.loads((tmp_path / "prepared" / "stats.json").read_text())
    reasons = {s["name"]: s["reason"] for s in stats["import"]["skipped"]}
    assert reasons.keys() == bad.keys()
    for name, reason in bad.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prepare.import_dir: skipped")]
        assert sum(f"/{name}: {reason}" in line and str(import_dir) in line for line in logged) == 1, name
    assert stats["import"]["mask_kinds"] == {"binary": 1, "binary01": 2, "soft": 1}  # twice.png is imported
    rows = [json.loads(line) for line in (tmp_path / "prepared" / "manifest.jsonl").read_text().splitlines()]
    imported = {r["id"].split("_")[1]: r for r in rows if r["source"] == "import:dataset"}
    assert sorted(imported) == ["binary", "soft", "twice", "zero"]
    for name in ("binary", "zero"):
        with Image.open(tmp_path / "prepared" / imported[name]["mask"]) as mask:
            assert np.array_equal(np.asarray(mask), BOX * 255)
    with Image.open(tmp_path / "prepared" / imported["soft"]["mask"]) as mask:
        expected = np.where(np.tile(np.arange(48) * 5, (40, 1)) / 255 > 0.5, 255, 0)  # the documented rule
        assert np.array_equal(np.asarray(mask), expected)


def test_an_import_folder_without_images_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "dataset" / "images").mkdir(parents=True)
    (tmp_path / "dataset" / "masks").mkdir()
    (tmp_path / "dataset" / "images" / "README.txt").write_text("images go here")
    assert main(cli_args("prepare", sets=prepare_sets(tmp_path, tmp_path / "dataset"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'dataset' / 'images'}: holds no images" in err[0], err
    assert not (tmp_path / "prepared").exists()
