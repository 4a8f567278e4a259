"""Very large images, strip by strip: decoded by libvips, outputs written as PNG rows finish.

PIL decodes a whole image (3 bytes/px, an 8000x6000 photo is 137 MB, twice that while
converting) and writes a whole map. Above `predict.stream_megapixels`, `wm predict` instead:

- reads the file with libvips in sequential mode (`StreamedImage`): rows arrive top to bottom in
  bands, the decoder keeps a few scanlines, and tiling (wmcore.infer.tiling) asks for one band of
  tile rows at a time;
- builds the global view (wmcore.infer.working_scale) from one more sequential pass: each band is
  shrunk horizontally with PIL, the stacked rows vertically, which are the same two passes PIL's
  own bilinear resize makes (bit-identical, except where PIL would shrink vertically first: +-1);
- writes the probability and mask PNGs row by row (`PngStripWriter`, 8-bit grey, "Up" filter,
  zlib), and the overlay JPEG with a libvips pipeline that streams the image and the mask file.

Pixels match `wmcore.infer.images.load_rgb` for what `streamable_size` lets through (8-bit RGB,
grey, palette, alpha flattened onto white, no EXIF rotation); anything else is decoded whole.
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from wmcore.errors import WmError
from wmcore.infer.images import ImageSkip

log = logging.getLogger(__name__)

FETCH_ROWS = 64  # rows per libvips region fetch: the decoder's working set stays a few MB at any width
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FILTER_UP = 2
PNG_COMPRESS_LEVEL = 6  # PIL's default for PNG
OVERLAY_RGB = (255, 0, 0)  # mask pixels of overlays are blended 50% towards this colour
OVERLAY_QUALITY = 90  # JPEG quality of overlays (wmcore.infer.folder writes its own with the same)


class NotStreamable(WmError):
    """libvips cannot read this file the way load_rgb would (the caller decodes it whole instead)."""


def _vips() -> Any:
    """pyvips, set up for streaming: no operation cache (it would hold decoded buffers), one thread."""
    try:
        import pyvips
    except (ImportError, OSError) as exc:  # OSError: the libvips shared library is missing
        raise NotStreamable(f"libvips unavailable ({exc}); install pyvips and pyvips-binary") from None
    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)  # decoding is sequential; torch owns the cores
    return pyvips


class StreamedImage:
    """A RowSource (wmcore.infer.tiling) over an image file decoded by libvips, band by band.

    Args:
        path: the image file.
        width, height: its size from the header (wmcore.infer.images.streamable_size).
    Raises NotStreamable at construction when libvips reads it differently (e.g. 16-bit samples).
    """

    def __init__(self, path: str | Path, width: int, height: int) -> None:
        self.path = Path(path)
        self.shape = (height, width, 3)
        self._image: Any = None  # the current sequential pass
        self._region: Any = None
        self._next = 0  # first row not yet fetched in this pass
        self._buffer = np.empty((0, width, 3), np.uint8)  # the last band, reused in place
        self._band_y0 = self._band_rows = 0
        self._open_pass()

    def _open_pass(self) -> None:
        """Start a new top-to-bottom pass over the file (a sequential image is read once)."""
        vips = _vips()
        try:
            image = vips.Image.new_from_file(str(self.path), access="sequential", fail_on="truncated")
        except vips.Error as exc:
            raise NotStreamable(f"{self.path}: libvips cannot open it: {_first_line(exc)}") from None
        if image.format != "uchar" or image.bands not in (1, 2, 3, 4):
            raise NotStreamable(f"{self.path}: {image.bands} bands of {image.format}; decoding it whole")
        if (image.height, image.width) != self.shape[:2]:
            raise NotStreamable(f"{self.path}: libvips reads {image.width}x{image.height}, the header says otherwise")
        if image.hasalpha():
            image = image.flatten(background=[255] * (image.bands - 1))  # transparency on white, as load_rgb
        if image.bands == 1:
            image = image.bandjoin([image, image])
        self._image, self._region, self._next = image, vips.Region.new(image), 0
        self._band_y0 = self._band_rows = 0

    def rows(self, y0: int, count: int) -> np.ndarray:
        """uint8 (count, W, 3): rows y0 .. y0 + count - 1; rows before the last band start a new pass.

        The result is a view of one buffer reused in place (tile rows overlap: the shared rows move
        up, only the new ones are decoded), valid until the next call.
        """
        height, width = self.shape[:2]
        count = min(count, height - y0)
        if y0 < self._band_y0:
            self._open_pass()
        start = y0 - self._band_y0
        have = max(0, min(self._band_rows - start, count))
        if len(self._buffer) < count:
            grown = np.empty((count, width, 3), np.uint8)
            grown[:have] = self._buffer[start : start + have]
            self._buffer = grown
        elif have and start:
            self._buffer[:have] = self._buffer[start : start + have]
        row = y0 + have
        if row < min(y0 + count, self._next):  # rows decoded earlier but not kept: read the file again
            self._open_pass()
        while row < y0 + count:
            n = min(FETCH_ROWS, y0 + count - row)
            self._buffer[row - y0 : row - y0 + n] = self._fetch(row, n)
            row += n
        self._band_y0, self._band_rows = y0, count
        return self._buffer[:count]

    def _fetch(self, y0: int, count: int) -> np.ndarray:
        """Rows from the decoder; they must follow the previous fetch (sequential access)."""
        while self._next < y0:  # rows nobody asked for: decode and drop them, in order
            self._fetch(self._next, min(FETCH_ROWS, y0 - self._next))
        vips = _vips()
        width = self.shape[1]
        try:
            data = self._region.fetch(0, y0, width, count)
        except vips.Error as exc:
            raise ImageSkip(self.path, f"corrupt or truncated: {_first_line(exc)}") from None
        self._next = y0 + count
        return np.frombuffer(data, np.uint8).reshape(count, width, 3)

    def downscale(self, shape: tuple[int, int]) -> np.ndarray:
        """uint8 (h, w, 3) global view, shape = (h, w): PIL bilinear as working_scale.downscale, from a pass."""
        height, width = self.shape[:2]
        gh, gw = shape
        self._open_pass()
        narrow = np.empty((height, gw, 3), np.uint8)  # <= global_side x 3 bytes per image row
        for y in range(0, height, FETCH_ROWS):
            band = self._fetch(y, min(FETCH_ROWS, height - y))
            narrow[y : y + len(band)] = Image.fromarray(band).resize((gw, len(band)), Image.Resampling.BILINEAR)
        self._open_pass()  # the native tiles read from the top again
        return np.asarray(Image.fromarray(narrow).resize((gw, gh), Image.Resampling.BILINEAR))

    def vips_image(self) -> Any:
        """A fresh sequential libvips image of the RGB pixels (for streamed writers)."""
        self._open_pass()
        return self._image

    def close(self) -> None:
        self._image = self._region = None
        self._buffer = self._buffer[:0]
        self._band_y0 = self._band_rows = 0


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]


# --------------------------------------------------------------------------- PNG rows


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngStripWriter:
    """An 8-bit greyscale PNG written row band by row band to an open binary file.

    Rows are filtered with PNG's "Up" filter (difference to the row above: smooth maps compress
    well) and deflated incrementally, so memory is one band whatever the height.
    """

    def __init__(self, fh: IO[bytes], width: int, height: int) -> None:
        self.fh, self.width, self.height = fh, width, height
        fh.write(PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        self._deflate = zlib.compressobj(PNG_COMPRESS_LEVEL)
        self._previous = np.zeros(width, np.uint8)
        self.rows_written = 0

    def write_rows(self, rows: np.ndarray) -> None:
        """rows: uint8 (h, W), the next h rows of the image."""
        if rows.ndim != 2 or rows.shape[1] != self.width or rows.dtype != np.uint8:
            raise ValueError(f"expected uint8 rows of width {self.width}, got {rows.dtype} {rows.shape}")
        filtered = np.empty((rows.shape[0], self.width + 1), np.uint8)
        filtered[:, 0] = PNG_FILTER_UP
        np.subtract(rows[:1], self._previous, out=filtered[:1, 1:])  # uint8 arithmetic wraps mod 256
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
        self._write_idat(self._deflate.compress(filtered.tobytes()))
        self._previous = rows[-1].copy()
        self.rows_written += rows.shape[0]

    def close(self) -> None:
        """Finish the stream; every row must have been written."""
        if self.rows_written != self.height:
            raise ValueError(f"PNG of {self.height} rows closed after {self.rows_written}")
        self._write_idat(self._deflate.flush())
        self.fh.write(_chunk(b"IEND", b""))

    def _write_idat(self, data: bytes) -> None:
        if data:
            self.fh.write(_chunk(b"IDAT", data))


class PngMaskWriter:
    """A MaskWriter (wmcore.infer.sinks) writing the mask (0/255) and probability PNGs row by row."""

    def __init__(self, mask_fh: IO[bytes], prob_fh: IO[bytes] | None, width: int, height: int) -> None:
        self.mask = PngStripWriter(mask_fh, width, height)
        self.prob = PngStripWriter(prob_fh, width, height) if prob_fh is not None else None  # None: mask only

    def write_rows(self, prob_u8: np.ndarray, mask: np.ndarray) -> None:
        self.mask.write_rows(mask.view(np.uint8) * np.uint8(255))
        if self.prob is not None:
            self.prob.write_rows(prob_u8)

    def close(self) -> None:
        self.mask.close()
        if self.prob is not None:
            self.prob.close()


def write_empty_png(fh: IO[bytes], width: int, height: int, band: int = 256) -> None:
    """An all-zero 8-bit greyscale PNG of width x height, written one band of rows at a time."""
    writer = PngStripWriter(fh, width, height)
    zeros = np.zeros((band, width), np.uint8)
    for y0 in range(0, height, band):
        writer.write_rows(zeros[: min(band, height - y0)])
    writer.close()

def write_overlay(image: StreamedImage, mask_path: Path, out_path: Path) -> None:
    """Overlay JPEG (mask pixels blended 50% towards red, as folder.overlay_image, without its boxes and caption)
    streamed by libvips."""
    vips = _vips()
    rgb = image.vips_image()
    try:
        mask = vips.Image.new_from_file(str(mask_path), access="sequential")
        red = ((rgb.cast("ushort") + list(OVERLAY_RGB)) / 2).cast("uchar")  # (a + c) // 2, as numpy's
        (mask > 127).ifthenelse(red, rgb).jpegsave(
            str(out_path), Q=OVERLAY_QUALITY, subsample_mode="on"
        )  # 4:2:0 as PIL
    except vips.Error as exc:
        raise ImageSkip(image.path, f"overlay not written: {_first_line(exc)}") from None
