"""Very large images strip by strip: libvips bands equal PIL's pixels, PNG rows decode back, and
`wm predict` on a streamed image writes what the whole-image path writes."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.reliability.test_bad_inputs import _png_chunk
from tests.test_infer_folder import rows_of, wm
from wmcore.infer.images import load_rgb, streamable_size
from wmcore.infer.large_images import PngStripWriter, StreamedImage
from wmcore.infer.working_scale import downscale

pytestmark = pytest.mark.usefixtures("fresh_predictor_cache")

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "wmdetect.pt"

RNG = np.random.default_rng(11)


def _textured(height: int, width: int) -> np.ndarray:
    """Smooth gradients plus noise and a bright bar: JPEG-friendly, not constant."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), (x + y) % 256], axis=2)
    noisy = base + RNG.integers(-20, 21, (height, width, 3))
    noisy[height // 3 : height // 3 + 12, width // 5 : width // 2] = 250
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _watermarked(height: int, width: int) -> np.ndarray:
    """A textured image with semi-transparent white text across it (what the shipped model finds)."""
    im = Image.fromarray(_textured(height, width)).convert("RGBA")
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(12, width // 8))
    for i, y in enumerate(range(height // 6, height, height // 3)):
        draw.text((width // 10 + 7 * i, y), "SAMPLE", fill=(255, 255, 255, 170), font=font)
    return np.asarray(Image.alpha_composite(im, layer).convert("RGB"))


def _save(path: Path, mode: str, height: int = 301, width: int = 213) -> Path:
    rgba = np.dstack([_watermarked(height, width), RNG.integers(0, 256, (height, width), dtype=np.uint8)])
    im = Image.fromarray(rgba, "RGBA")
    im = im.convert("RGB").quantize(64) if mode == "P" else im.convert(mode)
    im.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path


@pytest.mark.parametrize(
    ("name", "mode", "tolerance"),
    [("rgb.png", "RGB", 0), ("grey.png", "L", 0), ("pal.png", "P", 0), ("photo.jpg", "RGB", 0), ("tile.tif", "RGB", 0),
     ("alpha.png", "RGBA", 1), ("grey_alpha.png", "LA", 1)],
)  # fmt: skip
def test_streamed_bands_equal_pil_pixels_in_any_order(tmp_path, name, mode, tolerance):
    path = _save(tmp_path / name, mode)
    whole = load_rgb(path).astype(int)
    size = streamable_size(path, 200.0, 0.01)
    assert size == (213, 301)
    image = StreamedImage(path, *size)
    for y in range(0, 301, 48):  # bands overlap by 16 rows, as tile rows do (each valid until the next call)
        assert np.abs(image.rows(y, 64).astype(int) - whole[y : y + 64]).max() <= tolerance
    assert np.abs(image.rows(10, 30).astype(int) - whole[10:40]).max() <= tolerance  # backwards: a new pass
    assert np.abs(image.rows(250, 51).astype(int) - whole[250:]).max() <= tolerance  # forwards past a gap
    view = image.downscale((60, 42))
    assert view.shape == (60, 42, 3) and np.abs(view.astype(int) - downscale(load_rgb(path), (60, 42))).max() <= 1


def test_streamable_size_sends_only_large_upright_8bit_images(tmp_path):
    small = _save(tmp_path / "small.png", "RGB", 40, 30)
    assert streamable_size(small, 200.0, 0.01) is None  # 1,200 px <= 10,000
    assert streamable_size(small, 200.0, 0.0) is None  # 0 = streaming off
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_textured(200, 100)).save(rotated, exif=exif)
    assert streamable_size(rotated, 200.0, 0.001) is None  # an EXIF rotation needs the whole image
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((200, 100), 40000, np.uint16)).save(deep)
    assert streamable_size(deep, 200.0, 0.001) is None  # 16-bit grey: scaled by load_rgb, not by libvips
    assert streamable_size(_save(tmp_path / "big.webp", "RGB"), 200.0, 0.001) == (213, 301)


def test_png_strip_writer_rows_decode_back_exactly():
    rows = RNG.integers(0, 256, (77, 50), dtype=np.uint8)
    rows[20:40] = 128  # flat rows: the Up filter's zero runs
    buf = io.BytesIO()
    writer = PngStripWriter(buf, 50, 77)
    for y in range(0, 77, 13):
        writer.write_rows(rows[y : y + 13])
    writer.close()
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.mode == "L" and im.size == (50, 77)
        np.testing.assert_array_equal(np.asarray(im), rows)
    short = PngStripWriter(io.BytesIO(), 50, 77)
    short.write_rows(rows[:10])
    with pytest.raises(ValueError, match="77 rows closed after 10"):
        short.close()


def _outputs(out: Path, name: str) -> dict[str, np.ndarray]:
    return {kind: np.asarray(Image.open(out / f"{name}.{kind}")).astype(int) for kind in ("mask.png", "prob.png",
                                                                                          "overlay.jpg")}  # fmt: skip


def _drawn_on(boxes: list[list[int]], shape: tuple[int, int], margin: int = 4) -> np.ndarray:
    """Pixels near the box outlines and in the caption strip that wm predict draws on whole-image overlays."""
    drawn = np.zeros(shape, bool)
    drawn[: 24 + margin] = True  # the caption, top left
    for x0, y0, x1, y1 in boxes:
        outer = np.zeros(shape, bool)
        outer[max(0, y0 - margin) : y1 + margin + 1, max(0, x0 - margin) : x1 + margin + 1] = True
        outer[y0 + margin + 2 : max(y0 + margin + 2, y1 - margin - 1), x0 + margin + 2 : max(x0 + margin + 2, x1 - margin - 1)] = False
        drawn |= outer
    return drawn


@pytest.mark.parametrize("global_side", [0, 96])
def test_streamed_predict_writes_what_the_whole_image_path_writes(tmp_path, global_side):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _save(inbox / "large.png", "RGB", 330, 270)
    _save(inbox / "large.jpg", "RGB", 250, 190)
    Image.fromarray(_textured(40, 50)).save(inbox / "small.png")  # under the threshold: decoded whole either way
    # draft_decode off: the whole path must decode the same pixels the streamed one reads
    # enlarge_below off: these images at their own size (streamed small images enlarged: tests/test_infer_enlarge.py)
    common = ("predict.draft_decode=false", "predict.save_overlay=true", "predict.save_probability=true",
              f"predict.global_side={global_side}", "predict.enlarge_below=0",
              "predict.max_batch_megapixels=0.01",
              "predict.tile_size=128", "predict.tile_overlap=16", "predict.fusion=max" if global_side else "predict.fusion=tiles")  # fmt: skip
    runs = {}
    for label, stream in (("whole", 0.0), ("streamed", 0.02)):
        out = tmp_path / label
        assert wm(tmp_path, SHIPPED, str(inbox), "--out", str(out),
                  sets=(*common, f"predict.stream_megapixels={stream}")) == 0  # fmt: skip
        runs[label] = (out, {r["name"]: r for r in rows_of(out)})
    (whole_out, whole_rows), (streamed_out, streamed_rows) = runs["whole"], runs["streamed"]
    assert sorted(streamed_rows) == ["large.jpg", "large.png", "small.png"]
    for name in ("large.png", "large.jpg"):
        a, b = _outputs(whole_out, name), _outputs(streamed_out, name)
        if global_side == 0:  # same pixels in, same code: the same maps, rows and boxes
            np.testing.assert_array_equal(a["mask.png"], b["mask.png"])
            np.testing.assert_array_equal(a["prob.png"], b["prob.png"])
            for key in ("score", "area_fraction", "boxes", "width", "height"):
                assert whole_rows[name][key] == streamed_rows[name][key], key
        else:  # the global view's resize may differ by 1 grey level where PIL shrinks vertically first
            assert np.abs(a["prob.png"] - b["prob.png"]).max() <= 3
            assert (a["mask.png"] == b["mask.png"]).mean() >= 0.99
        assert 0.005 < (b["mask.png"] == 255).mean() < 0.5  # the text is found: equal masks mean something
        # Same tinted pixels, two JPEG encoders; the whole-image overlay also draws the boxes and a caption.
        drawn = _drawn_on(whole_rows[name]["boxes"], a["overlay.jpg"].shape[:2])
        assert np.abs(a["overlay.jpg"] - b["overlay.jpg"])[~drawn].mean() < 2.0
    assert not list(streamed_out.rglob(".*.tmp-*"))


def test_streamed_corrupt_image_is_a_skip_row_and_leaves_no_partial_files(tmp_path, checkpoint):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = (_save(tmp_path / "whole.jpg", "RGB", 400, 300)).read_bytes()
    (inbox / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])  # header intact, scan data cut
    _save(inbox / "fine.png", "RGB", 200, 150)
    out = tmp_path / "out"
    sets = ("predict.stream_megapixels=0.01", "predict.save_probability=true")
    assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), sets=sets) == 3
    rows = {r["name"]: r for r in rows_of(out)}
    assert rows["fine.png"]["status"] == "ok" and rows["cut.jpg"]["status"] == "skipped"
    assert "truncated" in rows["cut.jpg"]["reason"] or "corrupt" in rows["cut.jpg"]["reason"]
    assert not (out / "cut.jpg.mask.png").exists() and not (out / "cut.jpg.prob.png").exists()
    assert not list(out.rglob(".*.tmp-*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 1 and summary["skipped"] == 1


def _rgb48_png(height: int, width: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL opens it as 8-bit "RGB"; libvips keeps 16 bits)."""
    values = np.linspace(0, 65535, height * width * 3).astype(">u2").reshape(height, width * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in values)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def test_image_libvips_reads_differently_is_decoded_whole(tmp_path, checkpoint, caplog):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "deep.png").write_bytes(_rgb48_png(160, 120))
    assert streamable_size(inbox / "deep.png", 200.0, 0.001) == (120, 160)  # the header looks streamable
    _save(inbox / "plain.png", "RGB", 160, 120)
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="wmcore.infer.folder"):
        assert wm(tmp_path, checkpoint, str(inbox), "--out", str(out), sets=("predict.stream_megapixels=0.001",)) == 0
    rows = {r["name"]: r for r in rows_of(out)}
    assert all(r["status"] == "ok" for r in rows.values())
    assert (rows["deep.png"]["width"], rows["deep.png"]["height"]) == (120, 160)
    assert "decoding it whole" in caplog.text
