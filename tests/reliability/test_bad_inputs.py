"""One `wm predict` run over a folder holding every bad input of issue 7, next to good ones.

Expected: every good (if unusual) image processed, every bad file a `skipped` row whose reason
says what is wrong and a one-line warning naming the file, no traceback, exit code 3. The
chmod-000 file is made unreadable for real: the process runs without root's permission
override (see wm_process.without_file_permission_override).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.reliability.wm_process import (
    PREDICT_SETS,
    assert_no_traceback,
    file_modes_apply,
    run_wm,
    temp_files,
    without_file_permission_override,
)
from wmcore.infer.images import DEFAULT_MAX_MEGAPIXELS

RNG = np.random.default_rng(7)


def _noise(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb_png(side: int) -> bytes:
    """A valid 1-bit side x side PNG of zeros: ~side^2/8 bytes raw, a few KiB on disk."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _save(path: Path, image: Image.Image, **kwargs) -> bytes:
    image.save(path, **kwargs)
    return path.read_bytes()


def write_good_inputs(inbox: Path) -> dict[str, tuple[int, int]]:
    """Unusual but valid images; returns {name: (width, height) of the upright first frame}."""
    sizes = {}
    _save(inbox / "one_pixel.png", Image.fromarray(_noise(1, 1)))
    sizes["one_pixel.png"] = (1, 1)
    _save(inbox / "strip_5x3000.png", Image.fromarray(_noise(3000, 5)))
    sizes["strip_5x3000.png"] = (5, 3000)
    grey16 = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)
    _save(inbox / "grey16.png", Image.fromarray(grey16))
    sizes["grey16.png"] = (40, 30)
    _save(inbox / "cmyk.jpg", Image.fromarray(_noise(24, 36)).convert("CMYK"), quality=90)
    sizes["cmyk.jpg"] = (36, 24)
    palette = Image.new("P", (30, 20), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (0, 0, 15, 20))
    _save(inbox / "palette_transparent.png", palette, transparency=0)
    sizes["palette_transparent.png"] = (30, 20)
    frames = [Image.fromarray(_noise(20, 28)) for _ in range(3)]
    _save(inbox / "animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=50, loop=0)
    _save(inbox / "animated.webp", frames[0], save_all=True, append_images=frames[1:], duration=50)
    sizes["animated.gif"] = sizes["animated.webp"] = (28, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    _save(inbox / "exif_rotated.jpg", Image.fromarray(_noise(20, 40)), exif=exif, quality=90)
    sizes["exif_rotated.jpg"] = (20, 40)  # stored 40x20, upright 20x40
    _save(inbox / "name with spaces ümlaut 写真.png", Image.fromarray(_noise(16, 16)))
    sizes["name with spaces ümlaut 写真.png"] = (16, 16)
    return sizes


def write_bad_inputs(inbox: Path, unreadable_is_bad: bool) -> dict[str, str]:
    """Broken inputs; returns {name: start of the expected skip reason}."""
    jpeg = _save(inbox / "whole.jpg", Image.fromarray(_noise(64, 64)), quality=90)
    (inbox / "whole.jpg").unlink()
    png = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(png, format="PNG")
    (inbox / "zero_bytes.jpg").write_bytes(b"")
    (inbox / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (inbox / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (inbox / "text.jpg").write_text("this is a text file with an image suffix\n")
    (inbox / "error_page.png").write_text("<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>")
    (inbox / "bomb.png").write_bytes(decompression_bomb_png(20000))  # 400 MP > the documented 200 MP cap
    os.symlink("loop.jpg", inbox / "loop.jpg")  # a symlink to itself
    unreadable = inbox / "unreadable.png"
    unreadable.write_bytes(png.getvalue())
    unreadable.chmod(0)
    expected = {
        "zero_bytes.jpg": "empty file (0 bytes)",
        "truncated.jpg": "corrupt or truncated",
        "truncated.png": "corrupt or truncated",
        "text.jpg": "not an image",
        "error_page.png": "not an image",
        "bomb.png": f"too large: 400.0 MP > predict.max_image_megapixels={DEFAULT_MAX_MEGAPIXELS:g}",
        "loop.jpg": "unreadable: Too many levels of symbolic links",
    }
    if unreadable_is_bad:
        expected["unreadable.png"] = "unreadable: Permission denied"
    return expected


def test_one_predict_run_over_every_bad_input(tmp_path, checkpoint):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    (inbox / "sub").mkdir(parents=True)
    os.symlink(inbox, inbox / "sub" / "back_to_inbox")  # a folder loop: walked once, no repeats
    modes_apply = file_modes_apply()
    good = write_good_inputs(inbox)
    bad = write_bad_inputs(inbox, unreadable_is_bad=modes_apply)
    if not modes_apply:  # honest about it: without a way to drop root's override the file reads fine
        good["unreadable.png"] = (64, 64)

    done = run_wm(tmp_path, "predict", str(inbox), "--out", str(out), "--model", str(checkpoint),
                  sets=(*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}"),
                  preexec_fn=without_file_permission_override)  # fmt: skip

    assert done.returncode == 3, done.stderr[-3000:]
    assert_no_traceback(done.stderr)
    rows = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == sorted([*good, *bad])  # each file once, the folder loop added nothing
    for name, (width, height) in good.items():
        assert rows[name]["status"] == "ok", (name, rows[name]["reason"])
        assert (rows[name]["width"], rows[name]["height"]) == (width, height), name
        assert (out / f"{name}.mask.png").is_file() and (out / f"{name}.prob.png").is_file()
    warnings = [line for line in done.stderr.splitlines() if " skipped " in line]
    for name, reason in bad.items():
        assert rows[name]["status"] == "skipped" and rows[name]["reason"].startswith(reason), rows[name]
        assert not (out / f"{name}.mask.png").exists()
        assert sum(str(inbox / name) in line and reason in line for line in warnings) == 1, name
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["processed"], summary["skipped"]) == (len(good), len(bad))
    assert temp_files(out) == []


@pytest.mark.parametrize("frames_suffix", ["gif", "webp"])
def test_animation_uses_its_first_frame(tmp_path, frames_suffix):
    from wmcore.infer.images import load_rgb

    first, second = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    path = tmp_path / f"a.{frames_suffix}"
    Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)], duration=50,
                                **({"lossless": True} if frames_suffix == "webp" else {}))  # fmt: skip
    assert np.array_equal(load_rgb(path), first)
