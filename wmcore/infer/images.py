"""Robust image loading for inference: any common file and mode -> uint8 RGB (H, W, 3).

Handles JPEG/PNG/WebP/BMP/TIFF/GIF (first frame) and phone photos: AVIF (Pillow's
own decoder) and HEIC/HEIF (pillow-heif's libheif, registered with PIL once, here);
modes RGB, RGBA/LA and transparent palettes (composited over white, the colour a
viewer shows), grey, palette, 16-bit and 32-bit integer grey (scaled to 8 bits),
float, CMYK. Images come out upright: the EXIF orientation is applied (AVIF too:
Pillow reports its irot/imir as one); a HEIC's irot/imir is applied by libheif
while decoding, which then clears the EXIF tag phones write beside it, so it is
not applied twice. The decompression-bomb cap is explicit:
images over `max_megapixels` are refused from their header, before decoding.
Anything unreadable (zero-byte, truncated, not an image, a format whose decoder is
missing here) raises `ImageSkip` with the reason, which the caller logs and records.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

try:  # optional at run time: without it HEIC files are skipped with a reason that names it
    import pillow_heif
except ImportError:
    pillow_heif = None

DEFAULT_MAX_MEGAPIXELS = 200.0
# What wmcore.infer.large_images decodes strip by strip with the same pixels as load_rgb.
STREAM_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "WEBP"})
STREAM_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P"})
EXIF_ORIENTATION = 0x0112

# Truncated files are skipped, not half-decoded into grey garbage.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# ISO-BMFF brands (the ftyp box) of the phone formats, to name a format whose decoder is missing.
AVIF_BRANDS = frozenset({b"avif", b"avis"})
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})


def _register_decoders() -> dict[str, str]:
    """Register pillow-heif's HEIF opener with PIL (once, at import); returns {format: what is missing}."""
    missing = {}
    if not features.check("avif"):
        missing["AVIF"] = "this Pillow has no AVIF support"
    if pillow_heif is None:
        missing["HEIC"] = "pillow-heif not installed"
    else:
        # The photo only: its thumbnails, depth maps and auxiliary images are not read.
        pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    return missing


MISSING_DECODERS = _register_decoders()


class ImageSkip(Exception):
    """An input that cannot be used; `reason` is the short text recorded in the results table."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def set_pixel_cap(max_megapixels: float) -> None:
    """Make PIL's own bomb check agree with our cap (it errors at twice MAX_IMAGE_PIXELS)."""
    Image.MAX_IMAGE_PIXELS = int(max_megapixels * 1e6)


def load_rgb(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
    """Decode `path` to uint8 (H, W, 3) RGB, upright per EXIF. Raises ImageSkip with the reason."""
    with opened_image(path, max_megapixels) as im:
        im.load()
        return to_rgb_array(_upright(im))


class DraftedImage:
    """A JPEG decoded at a reduced size for its working view; its full pixels are decoded only if asked.

    PIL's draft mode lets libjpeg scale by 1/2, 1/4 or 1/8 inside the DCT, so a 4000x3000 photo
    whose working view is 1024 px costs a 2000x1500 decode. `shape` is the full upright size; it is
    a RowSource (wmcore.infer.tiling) with `downscale`, so working-scale inference takes its view from
    the reduced pixels, and native refinement (rare) or an overlay decodes the file whole (`rows`).
    """

    def __init__(self, path: str | Path, reduced: np.ndarray, height: int, width: int, max_megapixels: float) -> None:
        self.path, self.reduced, self.max_megapixels = Path(path), reduced, max_megapixels
        self.shape = (height, width, 3)
        self.dtype = np.dtype(np.uint8)
        self._full: np.ndarray | None = None

    def downscale(self, shape: tuple[int, int]) -> np.ndarray:
        """uint8 (h, w, 3) with shape = (h, w), from the reduced pixels (PIL bilinear, antialiased)."""
        return np.asarray(Image.fromarray(self.reduced).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))

    def full(self) -> np.ndarray:
        """The whole image at full size, decoded on first use (as load_rgb)."""
        if self._full is None:
            self._full = load_rgb(self.path, self.max_megapixels)
        return self._full

    def rows(self, y0: int, count: int) -> np.ndarray:
        return self.full()[y0 : y0 + count]


def load_for_working_side(path: str | Path, max_megapixels: float, side: int) -> np.ndarray | DraftedImage:
    """load_rgb, except that a JPEG at least twice `side` on its long side is decoded reduced (DraftedImage).

    The reduced decode keeps a long side >= `side`, so the working view downscaled from it loses
    nothing it would have had. side 0 = always whole.
    """
    with opened_image(path, max_megapixels) as im:
        long_side = max(im.size)
        if side <= 0 or im.format != "JPEG" or long_side < 2 * side:
            im.load()
            return to_rgb_array(_upright(im))
        full_w, full_h = im.size
        try:
            turned = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # width and height swap
        except Exception:  # a damaged EXIF block: _upright keeps the image as stored
            turned = False
        scale = side / long_side
        im.draft("RGB", (max(1, int(full_w * scale + 1)), max(1, int(full_h * scale + 1))))
        im.load()
        upright = _upright(im)
        if turned and upright.size == im.size and im.width != im.height:  # the transpose itself failed
            turned = False
        height, width = (full_w, full_h) if turned else (full_h, full_w)
        return DraftedImage(path, to_rgb_array(upright), height, width, max_megapixels)


def streamable_size(path: str | Path, max_megapixels: float, stream_megapixels: float) -> tuple[int, int] | None:
    """(width, height) when `path` is worth decoding strip by strip, else None (decode it whole).

    Worth it: over `stream_megapixels` (> 0), a format libvips reads row by row (STREAM_FORMATS),
    8-bit RGB/grey/palette with or without alpha, and upright as stored (an EXIF rotation needs the
    whole image). Reads the header only; raises ImageSkip like load_rgb (unreadable, too large).
    """
    with opened_image(path, max_megapixels) as im:
        if stream_megapixels <= 0 or im.width * im.height <= stream_megapixels * 1e6:
            return None
        if im.format not in STREAM_FORMATS or im.mode not in STREAM_MODES:
            return None
        try:
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # a damaged EXIF block: load_rgb keeps such images as stored; so do we
            orientation = 1
        return (im.width, im.height) if orientation in (0, 1) else None


@contextlib.contextmanager
def opened_image(path: str | Path, max_megapixels: float) -> Iterator[Image.Image]:
    """The PIL image of `path`, header read and size checked against the cap, pixels not yet decoded.

    Any failure inside the block, decoding included, becomes ImageSkip with the reason.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageSkip(path, f"unreadable: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageSkip(path, "empty file (0 bytes)")
    try:
        # Opened here, not by PIL: a file we may not read (permissions, a FIFO's peer gone) is
        # "unreadable", not "corrupt", and the message says which it is.
        fh = open(path, "rb")  # noqa: SIM115 - PIL takes ownership below, closed by the with
    except OSError as exc:
        raise ImageSkip(path, f"unreadable: {exc.strerror or exc}") from None
    try:
        with fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap below decides
            with Image.open(fh) as im:
                megapixels = im.width * im.height / 1e6
                if megapixels > max_megapixels:
                    raise ImageSkip(
                        path, f"too large: {megapixels:.1f} MP > predict.max_image_megapixels={max_megapixels:g}"
                    )
                yield im
    except ImageSkip:
        raise
    except UnidentifiedImageError:
        raise ImageSkip(path, _unrecognised(path)) from None
    except Image.DecompressionBombError as exc:
        raise ImageSkip(path, f"too large: {exc}") from None
    # Decoders signal corrupt data with many exception types (OSError, SyntaxError, ValueError,
    # struct.error, EOFError, ...); any of them means this one file is unusable, not a bug here.
    except Exception as exc:
        raise ImageSkip(path, f"corrupt or truncated: {type(exc).__name__}: {exc}") from None


def container_format(head: bytes) -> str | None:
    """"AVIF" or "HEIC" when `head` (a file's first bytes) starts an ISO-BMFF file of those brands, else None."""
    if head[4:8] != b"ftyp":
        return None
    box_end = min(len(head), int.from_bytes(head[:4], "big"))
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, box_end - 3, 4)}
    if brands & AVIF_BRANDS:
        return "AVIF"
    return "HEIC" if brands & HEIF_BRANDS else None


def _unrecognised(path: Path) -> str:
    """Skip reason of a file no decoder took: the missing support when it is AVIF/HEIC, else not an image."""
    try:
        with open(path, "rb") as fh:
            fmt = container_format(fh.read(64))
    except OSError:
        fmt = None
    if fmt in MISSING_DECODERS:
        return f"unsupported format: {fmt} ({MISSING_DECODERS[fmt]})"
    return "not an image (format not recognised)"


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a damaged EXIF block must not cost the image: keep it as stored
        return im


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 (H, W, 3) (may be read-only). High bit depths scaled, transparency on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(im)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    # asarray already copies PIL's buffer (read-only result); a second copy would cost 3 bytes/px more.
    return np.asarray(rgb, dtype=np.uint8)


def _high_depth_to_rgb(im: Image.Image) -> np.ndarray:
    """16-bit (I;16*, or I holding 16-bit data) and float grey -> uint8 grey repeated to 3 channels."""
    values = np.asarray(im)
    if im.mode == "F":
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        grey = np.nan_to_num(values.astype(np.float32) * scale)
    else:
        # 16-bit files are stored full range: 65535 -> 255 (divide by 257 maps range exactly).
        grey = values.astype(np.float32) / 257.0
    grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey8[:, :, None], 3, axis=2)
