"""`wm predict` end to end: outputs, results table, skips and exit code 3, resume/--force, atomicity, names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wmcore.infer.folder as folder
from wmcore.cli import main
from wmcore.infer.inputs import discover_inputs, output_paths, safe_name
from wmcore.infer.results_table import ResultsTable

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


pytestmark = pytest.mark.usefixtures("fresh_predictor_cache")


@pytest.fixture
def inbox(tmp_path) -> Path:
    root = tmp_path / "inbox"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (150, 90, 3), dtype=np.uint8)).save(root / "sub" / "big.jpg")
    Image.new("L", (30, 20), 90).save(root / "sub" / "grey.webp")
    # Only images: a non-image file is a skip row (exit code 3), see tests/reliability/test_every_file.py.
    return root


def wm(tmp_path: Path, checkpoint: Path, *args: str, sets: tuple[str, ...] = ()) -> int:
    # probability maps on: these tests read them (the default run writes masks only, tested below)
    overrides = ["paths.cache_dir=" + str(tmp_path / "cache"), "predict.tile_size=64", "predict.tile_overlap=8",
                 "base.threads=1", "predict.save_probability=true", *sets]  # fmt: skip
    argv = ["--params", str(REPO_PARAMS)]
    for o in overrides:
        argv += ["-S", o]
    return main([*argv, "predict", *args, "--model", str(checkpoint)])


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_probability_maps_are_written_only_when_asked(tmp_path, checkpoint, inbox):
    out = tmp_path / "out"
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), sets=("predict.save_probability=false",)) == 0
    assert len(list(out.rglob("*.mask.png"))) == 5 and not list(out.rglob("*.prob.png"))
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), sets=("predict.save_probability=false",)) == 0
    assert len(rows_of(out)) == 5  # complete without them: nothing redone
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out)) == 0  # asked for now: every image gets one
    assert len(list(out.rglob("*.prob.png"))) == 5


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_writes_outputs_table_and_summary(tmp_path, checkpoint, inbox, workers):
    out = tmp_path / "out"
    sets = ("predict.save_overlay=true", f"predict.loader_workers={workers}")
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), sets=sets) == 0
    names = ["img0.png", "img1.png", "img2.png", "sub/big.jpg", "sub/grey.webp"]
    rows = rows_of(out)
    assert [r["name"] for r in rows] == names and all(r["status"] == "ok" for r in rows)
    for name in names:
        for kind, suffix in (("mask", ".mask.png"), ("prob", ".prob.png"), ("overlay", ".overlay.jpg")):
            assert (out / f"{name}{suffix}").is_file(), (name, kind)
    big = next(r for r in rows if r["name"] == "sub/big.jpg")
    assert (big["width"], big["height"]) == (90, 150)
    mask = np.asarray(Image.open(out / "sub/big.jpg.mask.png"))
    assert mask.shape == (150, 90) and set(np.unique(mask)) <= {0, 255}
    assert big["area_fraction"] == pytest.approx((mask == 255).mean(), abs=1e-6)
    assert big["has_watermark"] == (big["score"] >= 0.5)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,path,status") and len(csv_lines) == 1 + len(names)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 5 and summary["skipped"] == 0
    assert summary["batch_success_rate"] == 1.0 and summary["batch_size_final"] >= 1


def test_corrupt_inputs_become_skip_rows_and_exit_code_3(tmp_path, checkpoint, inbox):
    (inbox / "zero.jpg").write_bytes(b"")
    (inbox / "text.jpg").write_text("hello, I am text")
    good = (inbox / "img0.png").read_bytes()
    (inbox / "trunc.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    assert wm(tmp_path, checkpoint, str(inbox), str(tmp_path / "missing.png"), "--out", str(out)) == 3
    by_name = {r["name"]: r for r in rows_of(out)}
    assert by_name["zero.jpg"]["reason"].startswith("empty file")
    assert by_name["text.jpg"]["reason"].startswith("not an image")
    assert by_name["trunc.png"]["reason"].startswith("corrupt or truncated")
    assert by_name[str(tmp_path / "missing.png")]["reason"] == "not found"
    assert sum(r["status"] == "ok" for r in by_name.values()) == 5
    assert not (out / "zero.jpg.mask.png").exists()


def test_rerun_skips_complete_outputs_and_force_redoes(tmp_path, checkpoint, inbox):
    out = tmp_path / "out"
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out)) == 0
    stamp = (out / "img1.png.mask.png").stat().st_mtime_ns
    (out / "img2.png.prob.png").unlink()  # an incomplete image is redone
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["processed"], summary["up_to_date"]) == (1, 4)
    assert (out / "img2.png.prob.png").is_file()
    assert (out / "img1.png.mask.png").stat().st_mtime_ns == stamp
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), "--force") == 0
    assert json.loads((out / "summary.json").read_text())["processed"] == 5
    names = [r["name"] for r in rows_of(out)]
    assert len(names) == len(set(names)) == 5  # exactly one row per image after three runs


def test_interrupted_write_leaves_no_partial_file_and_rerun_completes(tmp_path, checkpoint, inbox, monkeypatch):
    out = tmp_path / "out"
    real_save = Image.Image.save
    calls = {"n": 0}

    def failing_save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # 2nd image's mask (after mask + prob of the 1st): die mid-file
            fp.write(b"\x89PNG partial")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), "--no-overlay") == 130
    monkeypatch.setattr(Image.Image, "save", real_save)
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".") and p.name != ".results.lock"]
    assert leftovers == []  # no temp file left behind
    assert not (out / "img1.png.mask.png").exists()  # the interrupted file was never renamed into place
    assert [r["name"] for r in rows_of(out)] == ["img0.png"]  # the table was compacted on the way out
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), "--no-overlay") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["processed"], summary["up_to_date"]) == (4, 1)


def test_torn_journal_line_is_ignored_and_repaired(tmp_path):
    table = ResultsTable(tmp_path)
    table.append({"name": "a", "status": "ok"})
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"name": "b", "sta')  # a row cut off by a crash
    table.append({"name": "c", "status": "ok"})
    assert sorted(table.load()) == ["a", "c"]
    assert table.compact() == 2


@pytest.mark.parametrize(
    ("relative", "expected"),
    [("a/b.jpg", "a/b.jpg"), ("../../etc/x.png", "etc/x.png"), ("/abs/y.png", "abs/y.png"),
     ("a/../../b.png", "a/b.png"), ("..", "x"), ("a\\..\\..\\c.png", "a/c.png"), ("bad\x00name.png", "bad_name.png")],
)  # fmt: skip
def test_output_names_cannot_escape(tmp_path, relative, expected):
    name = safe_name(relative)
    assert name == expected
    for path in output_paths(tmp_path / "out", name, overlay=True).values():
        assert path.resolve().is_relative_to((tmp_path / "out").resolve())


def test_globs_symlink_loops_and_output_folder_inside_input(tmp_path, inbox):
    os.symlink(inbox, inbox / "sub" / "loop")  # a folder that contains itself
    (inbox / "out").mkdir()
    Image.new("RGB", (8, 8)).save(inbox / "out" / "previous.mask.png")
    images, missing = discover_inputs([str(inbox)], exclude=inbox / "out")
    names = [i.name for i in images]
    assert names == ["img0.png", "img1.png", "img2.png", "sub/big.jpg", "sub/grey.webp"]
    images, missing = discover_inputs([str(inbox / "**" / "*.png"), str(inbox / "img0.png"), str(tmp_path / "no*.png")])
    assert [i.name for i in images][:3] == ["img0.png", "img1.png", "img2.png"]  # the repeat of img0 is dropped
    assert [m.reason for m in missing] == ["no images matched"]


def test_same_name_from_two_roots_gets_a_suffix(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / d / "x.png")
    images, _ = discover_inputs([str(tmp_path / "a"), str(tmp_path / "b")])
    assert [i.name for i in images] == ["x.png", "x.png~2"]


def test_results_name_both_thresholds_and_the_options_override_them(tmp_path, checkpoint, inbox, capsys):
    out = tmp_path / "out"
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"outputs in {out}/: *.mask.png, *.prob.png, *.overlay.jpg per image; results.csv" in printed
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[4:8] == ["score", "image_threshold", "has_watermark", "threshold"]
    calibrated = rows_of(out)
    assert all((r["threshold"], r["image_threshold"]) == (0.5, 0.5) for r in calibrated)  # the checkpoint's meta
    assert all(r["has_watermark"] == (r["score"] >= r["image_threshold"]) for r in calibrated)
    low = min(r["score"] for r in calibrated) / 2
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), "--force", "--no-overlay",
              "--threshold", "0.25", "--image-threshold", str(low)) == 0  # fmt: skip
    rows = rows_of(out)
    assert all(r["threshold"] == 0.25 and r["image_threshold"] == pytest.approx(low, abs=1e-6) for r in rows)
    assert all(r["has_watermark"] for r in rows)
    assert "*.overlay.jpg" not in capsys.readouterr().out
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), "--threshold", "1.5") == 2


@pytest.mark.parametrize(("setting", "images", "expected"),
                         [("auto", 99, True), ("auto", 100, False), (True, 5000, True), (False, 3, False)])  # fmt: skip
def test_overlays_by_default_only_for_small_runs(setting, images, expected):
    assert folder.overlay_wanted(setting, images, 100) is expected


def test_overlay_draws_boxes_and_the_score():
    image = np.full((120, 160, 3), 100, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:70, 80:100] = True
    out = folder.overlay_image(image, mask, boxes=[[80, 60, 99, 69]], label="watermark: score 0.90 >= 0.50")
    assert tuple(out[60, 80]) == (255, 0, 0) and tuple(out[65, 90]) == (177, 50, 50)  # box edge, tinted inside
    assert tuple(out[110, 150]) == (100, 100, 100)
    caption = out[:16, :120].astype(int)
    assert (caption == 0).all(axis=2).any() and caption.min(axis=2).max() > 200  # light letters on black


def test_overlay_marks_mask_pixels_only():
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    out = folder.overlay_image(image, mask, rows=3)
    assert tuple(out[1, 2]) == (177, 50, 50) and tuple(out[0, 0]) == (100, 100, 100)


def test_missing_input_is_an_error_empty_folder_is_fine_empty_glob_skips(tmp_path, checkpoint):
    assert wm(tmp_path, checkpoint, str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")) == 2
    (tmp_path / "empty").mkdir()
    assert wm(tmp_path, checkpoint, str(tmp_path / "empty"), "--out", str(tmp_path / "out")) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["processed"] == 0
    assert wm(tmp_path, checkpoint, str(tmp_path / "empty" / "*.png"), "--out", str(tmp_path / "out")) == 3
    rows = rows_of(tmp_path / "out")
    assert [(r["status"], r["reason"]) for r in rows] == [("skipped", "no images matched")]


def test_predict_images_returns_rows_and_concurrent_runs_keep_every_row(tmp_path, checkpoint, inbox):
    from concurrent.futures import ThreadPoolExecutor

    from wmcore.config import load_params

    params = load_params(REPO_PARAMS, overrides={"paths.cache_dir": str(tmp_path / "cache"), "base.threads": 1,
                                                 "predict.tile_size": 64, "predict.tile_overlap": 8})  # fmt: skip
    items, _ = discover_inputs([str(inbox)])
    (inbox / "bad.png").write_bytes(b"garbage")
    items += discover_inputs([str(inbox / "bad.png")])[0]
    out = tmp_path / "screen"
    chunks = [items[0::2], items[1::2]]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: folder.predict_images(params, c, out, model=str(checkpoint)), chunks))
    for chunk, rows in zip(chunks, results, strict=True):
        assert sorted(rows) == sorted(i.name for i in chunk)
    merged = {**results[0], **results[1]}
    assert merged["bad.png"]["status"] == "skipped" and merged["img0.png"]["status"] == "ok"
    assert sorted(r["name"] for r in rows_of(out)) == sorted(i.name for i in items)
