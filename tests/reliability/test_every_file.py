"""Every file of an input folder accounted for, and phone photos (HEIC, AVIF) decoded upright.

An inbox holding images, phone photos, a FIFO named `x.jpg`, a socket, a symlink to a device,
a dangling symlink, files without an extension or with a non-image one: `wm predict` (and the
screening) must give each file exactly one row in results.csv, processed or `skipped` with the
reason, never open the FIFO (that would block), and try a file named on the command line
whatever its suffix. HEIC and AVIF photos are encoded by the test (pillow-heif, Pillow) with an
EXIF orientation of 6 (stored 40x20, upright 20x40): the mask must have the upright size.
Without their decoders (the import made to fail in a child process) they are skip rows whose
reason names the missing support.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.reliability.wm_process import PREDICT_SETS, REPO, assert_no_traceback, cli_args, process_env, run_wm
from wmcore.config import load_params
from wmcore.infer.images import container_format, load_rgb
from wmcore.infer.screening import discover_inbox, screen_chunk

STORED, UPRIGHT = (40, 20), (20, 40)  # (width, height) as stored, and upright after EXIF orientation 6


def phone_photo(path: Path) -> Path:
    """A 40x20 photo whose left quarter is white, saved as `path` (HEIC/AVIF by suffix), EXIF orientation 6.

    Upright (rotated 90 degrees clockwise) it is 20x40 with its top quarter white. HEIC: pillow-heif
    writes the orientation as the container's irot and keeps the EXIF tag, as phones do.
    """
    pixels = np.zeros((STORED[1], STORED[0], 3), np.uint8)
    pixels[:, : STORED[0] // 4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    return path


def write_inbox(inbox: Path) -> dict[str, str]:
    """Every kind of file in `inbox`; returns {name: "" (processed) or the start of its skip reason}."""
    (inbox / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(inbox / "photo.png")
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(inbox / "sub" / "deep.webp", lossless=True)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(inbox / ".hidden.png")
    phone_photo(inbox / "iphone.heic")
    phone_photo(inbox / "pixel.avif")
    os.mkfifo(inbox / "x.jpg")  # opening it would block until a writer comes: it must never be opened
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(inbox / "sock.png"))
    os.symlink("/dev/null", inbox / "device.jpg")
    os.symlink(inbox / "deleted.png", inbox / "dangling.png")
    Image.new("RGB", (8, 8)).save(inbox / "no_extension", format="PNG")  # an image, but nothing says so
    (inbox / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (inbox / "notes.txt").write_text("shot list\n")
    return {
        "photo.png": "", "sub/deep.webp": "", ".hidden.png": "", "iphone.heic": "", "pixel.avif": "",
        "x.jpg": "not a regular file: FIFO", "sock.png": "not a regular file: socket",
        "device.jpg": "not a regular file: character device", "dangling.png": "unreadable: No such file",
        "no_extension": "no image extension", ".DS_Store": "no image extension",
        "notes.txt": "not an image extension: .txt",
    }  # fmt: skip


def every_file(folder: Path) -> list[str]:
    """Names (relative POSIX) of every non-folder entry under `folder`, found independently of wmcore."""
    return sorted(Path(d, f).relative_to(folder).as_posix() for d, _dirs, files in os.walk(folder) for f in files)


def csv_rows(out: Path) -> dict[str, dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text(encoding="utf-8"))))
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)), names  # exactly once
    return {r["name"]: r for r in rows}


def test_every_file_under_the_inbox_gets_one_row(tmp_path, checkpoint):
    inbox, out, elsewhere = tmp_path / "inbox", tmp_path / "out", tmp_path / "elsewhere"
    expected = write_inbox(inbox)
    elsewhere.mkdir()
    Image.new("RGB", (12, 10)).save(elsewhere / "downloaded", format="JPEG")  # named on the command line
    Image.new("RGB", (9, 7)).save(inbox / "named_too", format="PNG")  # in the folder and named: tried
    expected |= {"downloaded": "", "named_too": ""}
    assert sorted(expected) == sorted([*every_file(inbox), "downloaded"])

    done = run_wm(tmp_path, "predict", str(inbox), str(elsewhere / "downloaded"), str(inbox / "named_too"),
                  "--out", str(out), "--model", str(checkpoint), sets=PREDICT_SETS, timeout=120)  # fmt: skip

    assert done.returncode == 3, done.stderr[-3000:]
    assert_no_traceback(done.stderr)
    rows = csv_rows(out)
    assert sorted(rows) == sorted(expected)
    warnings = [line for line in done.stderr.splitlines() if " skipped " in line]
    for name, reason in expected.items():
        if reason:
            assert rows[name]["status"] == "skipped" and rows[name]["reason"].startswith(reason), rows[name]
            assert any(f"{rows[name]['path']}: {rows[name]['reason']}" in line for line in warnings), name
        else:
            assert rows[name]["status"] == "ok", rows[name]
    for name in ("iphone.heic", "pixel.avif"):  # the mask has the upright size
        assert (int(rows[name]["width"]), int(rows[name]["height"])) == UPRIGHT, rows[name]
        with Image.open(out / f"{name}.mask.png") as mask:
            assert mask.size == UPRIGHT
    assert (int(rows["downloaded"]["width"]), int(rows["downloaded"]["height"])) == (12, 10)


def test_screening_accounts_for_every_file_too(tmp_path, checkpoint):
    """The inbox screening discovers and records the same way (its library path, no Prefect)."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    expected = write_inbox(inbox)
    params = load_params(REPO / "params.yaml", overrides={"paths.cache_dir": str(tmp_path / "cache"),
                                                         "base.threads": 1, "predict.tile_size": 64,
                                                         "predict.tile_overlap": 8})  # fmt: skip
    items = discover_inbox(inbox, out)
    manifest = screen_chunk(params, out, items, str(checkpoint))
    assert sorted(r["name"] for r in manifest) == sorted(expected)  # each recorded, the dangling link too
    rows = csv_rows(out)
    assert sorted(rows) == sorted(expected)
    assert {n for n, r in rows.items() if r["status"] == "ok"} == {n for n, why in expected.items() if not why}


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_phone_photos_decode_upright(tmp_path, suffix):
    rgb = load_rgb(phone_photo(tmp_path / f"photo{suffix}"))
    assert rgb.shape == (UPRIGHT[1], UPRIGHT[0], 3)
    quarter = UPRIGHT[1] // 4
    assert rgb[: quarter - 2].mean() > 200 and rgb[quarter + 2 :].mean() < 40  # the white quarter is on top


BLOCK_DECODERS = "import sys; sys.modules['pillow_heif'] = None; sys.modules['PIL._avif'] = None; "


def test_without_their_decoders_phone_photos_are_skips_naming_the_missing_support(tmp_path, checkpoint):
    """A child process where importing pillow-heif and Pillow's AVIF module fails, as if not installed."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    phone_photo(inbox / "iphone.heic")
    phone_photo(inbox / "pixel.avif")
    Image.new("RGB", (8, 8)).save(inbox / "plain.png")
    argv = cli_args("predict", str(inbox), "--out", str(out), "--model", str(checkpoint), sets=PREDICT_SETS)
    code = BLOCK_DECODERS + f"from wmcore.cli import main; sys.exit(main({argv!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=process_env(tmp_path), capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]
    assert_no_traceback(done.stderr)
    rows = csv_rows(out)
    assert rows["iphone.heic"]["reason"] == "unsupported format: HEIC (pillow-heif not installed)"
    assert rows["pixel.avif"]["reason"] == "unsupported format: AVIF (this Pillow has no AVIF support)"
    assert rows["plain.png"]["status"] == "ok"


@pytest.mark.parametrize(
    ("head", "expected"),
    [(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
     (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "AVIF"),
     (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif", "AVIF"),  # generic brand, AVIF compatible
     (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isommp41", None),  # an MP4 video
     (b"\xff\xd8\xff\xe0\x00\x10JFIF", None)],
)  # fmt: skip
def test_container_format_reads_the_brands(head, expected):
    assert container_format(head) == expected
