"""Robust image loading: every mode and format to uint8 RGB with known pixel values; bad files skip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wmcore.infer.images import ImageSkip, load_rgb


def save(tmp_path, name, im, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("L", 77, (77, 77, 77)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (0, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white background
        ("LA", (100, 255), (100, 100, 100)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_png_modes_load_as_rgb(tmp_path, mode, value, expected):
    path = save(tmp_path, "x.png", Image.new(mode, (7, 5), value))
    out = load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    assert tuple(out[2, 3]) == expected


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (4, 3), 1)
    im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert tuple(load_rgb(save(tmp_path, "p.png", im))[0, 0]) == (200, 100, 50)
    assert tuple(load_rgb(save(tmp_path, "pt.png", im, transparency=1))[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize(("raw", "expected"), [(0, 0), (257 * 100, 100), (65535, 255)])
def test_16_bit_grey_is_scaled_to_8_bits(tmp_path, raw, expected):
    im = Image.fromarray(np.full((6, 9), raw, dtype=np.uint16))
    out = load_rgb(save(tmp_path, "g16.png", im))
    assert out.shape == (6, 9, 3) and np.all(out == expected)


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    out = load_rgb(save(tmp_path, "c.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95))
    r, g, b = (int(v) for v in out[8, 8])
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full = red


@pytest.mark.parametrize(("suffix", "kw"), [(".webp", {"lossless": True}), (".bmp", {}), (".tiff", {}), (".gif", {})])
def test_other_formats(tmp_path, suffix, kw):
    im = Image.new("RGB", (12, 8), (0, 128, 255))
    out = load_rgb(save(tmp_path, "f" + suffix, im, **kw))
    assert out.shape == (8, 12, 3)
    assert np.abs(out[4, 6].astype(int) - [0, 128, 255]).max() <= 8  # GIF palette quantises a little


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:4, :4] = (255, 0, 0)  # top-left marker of the stored pixels (a block: JPEG blurs single pixels)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_rgb(save(tmp_path, "r.jpg", im, exif=exif.tobytes(), quality=100))
    assert out.shape == (20, 10, 3)
    assert out[1, -2, 0] > 200 and out[1, 1, 0] < 60  # the marker moved to the top-right corner


def test_bad_files_raise_image_skip_with_reason(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image at all")
    good = save(tmp_path, "good.jpg", Image.new("RGB", (64, 64), (1, 2, 3)))
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    png = save(tmp_path, "good.png", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    (tmp_path / "trunc.png").write_bytes(png.read_bytes()[:300])
    reasons = {}
    for name in ("empty.png", "text.jpg", "trunc.jpg", "trunc.png", "missing.png"):
        with pytest.raises(ImageSkip) as err:
            load_rgb(tmp_path / name)
        reasons[name] = err.value.reason
    assert reasons["empty.png"].startswith("empty file")
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons["trunc.jpg"].startswith("corrupt or truncated")
    assert reasons["trunc.png"].startswith("corrupt or truncated")
    assert reasons["missing.png"].startswith("unreadable")


def test_decompression_bomb_cap_refuses_large_images(tmp_path):
    path = save(tmp_path, "big.png", Image.new("L", (200, 100)))  # 0.02 MP
    with pytest.raises(ImageSkip, match="too large"):
        load_rgb(path, max_megapixels=0.01)
    assert load_rgb(path, max_megapixels=0.03).shape == (100, 200, 3)
