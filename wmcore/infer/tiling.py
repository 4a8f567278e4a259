"""Tiled inference of images of any size, one row of tiles at a time.

An image larger than the tile is covered by the fewest overlapping tiles,
evenly spread and shrunk to what the overlap needs (see `tile_layout`). Each tile's
probabilities are weighted by a separable window that is 1 in the middle and
falls smoothly (raised cosine) over the overlap, so seams vanish. Because the
window is separable, the sum of weights at a pixel is the product of two 1-D
sums: no full-size weight map is ever allocated.

Rows of tiles are processed top to bottom into a strip accumulator of one tile
height. When the next row starts at y, every row above y is final: it is
normalised and handed to a `StripSink` (in pieces of `SINK_PIXELS`, so the
sinks' temporaries stay small however wide the image), and the accumulator
slides down. The image itself is read one band of tile rows at a time
(`RowSource`: an array, or a file decoded strip by strip), so memory is one
strip (tile height x image width) plus one batch of tiles, whatever the image
height; the caller decides what a sink keeps (a float32 map, or only uint8
masks and statistics, or PNG rows already written).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

# Runs a batch of same-shape tiles: uint8 (N, h, w, 3) -> float32 probabilities (N, h, w).
TileRunner = Callable[[np.ndarray], np.ndarray]
# Runs a list of work items in adaptive batches (AdaptiveBatchSizer.run; limit = most items per batch).
BatchRunner = Callable[..., list]
# Pixels handed to a sink per call: 1 MB of float32, so the sinks' temporaries (upsampled global
# rows, uint8 maps, labels, top-k pool) stay a few MB at any width.
SINK_PIXELS = 1 << 18


class RowSource(Protocol):
    """An image read top to bottom in bands (wmcore.infer.large_images.StreamedImage, or an array)."""

    shape: tuple[int, ...]  # (H, W, 3)

    def rows(self, y0: int, count: int) -> np.ndarray:
        """uint8 (count, W, 3): image rows y0 .. y0 + count - 1 (y0 never decreases by more than a band)."""


class ArrayRows:
    """A RowSource over a whole uint8 (H, W, 3) array (bands are views, no copies)."""

    def __init__(self, image: np.ndarray) -> None:
        self.image, self.shape = image, image.shape

    def rows(self, y0: int, count: int) -> np.ndarray:
        return self.image[y0 : y0 + count]


def as_row_source(image: np.ndarray | RowSource) -> RowSource:
    """A RowSource for an array (wrapped) or for a RowSource (itself)."""
    return ArrayRows(image) if isinstance(image, np.ndarray) else image


class StripSink(Protocol):
    """Receives final probabilities of consecutive row strips, top to bottom."""

    def consume(self, y0: int, probs: np.ndarray) -> None:
        """probs: float32 (h, W) in [0, 1] for image rows y0 .. y0 + h - 1."""


def tile_layout(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """Tile size and start offsets covering [0, length) with the fewest tiles of side <= `tile`.

    The tiles are then shrunk to the smallest size (rounded up to `multiple`, the model's
    padding unit) that still overlaps by >= `overlap`, and spread evenly: a 640 px side with
    tile 512 / overlap 64 gets 2 tiles of 352 px (704 px of work) instead of 2 of 512 (1024 px).
    Returns (tile side, starts); one tile of side `length` when length <= tile.
    """
    if length <= tile:
        return length, [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)
    size = min(tile, math.ceil(size / multiple) * multiple)
    return size, [round(i * (length - size) / (n - 1)) for i in range(n)]


def blend_window(size: int, overlap: int) -> np.ndarray:
    """1-D weights (size,) float32: raised-cosine ramps of `overlap` px at both ends, 1 in between.

    The ramps never reach 0 (first weight is sin^2(pi/(4*overlap))), so image borders
    covered by a single tile keep a positive weight and normalise back exactly.
    """
    w = np.ones(size, dtype=np.float32)
    n = min(overlap, size // 2)
    if n > 0:
        ramp = np.sin(0.5 * np.pi * (np.arange(n, dtype=np.float64) + 0.5) / n) ** 2
        w[:n] = ramp
        w[size - n :] = np.minimum(w[size - n :], ramp[::-1])
    return w


def weight_sums(length: int, tile: int, starts: list[int], window: np.ndarray) -> np.ndarray:
    """Sum of the 1-D windows of all tiles at each position: (length,) float32."""
    total = np.zeros(length, dtype=np.float32)
    for s in starts:
        total[s : s + tile] += window
    return total


def predict_tiled(
    image: np.ndarray | RowSource,
    tile_size: int,
    overlap: int,
    run_tiles: TileRunner,
    run_batches: BatchRunner,
    sink: StripSink,
    multiple: int = 1,
    batch_limit: Callable[[int, int], int | None] | None = None,
) -> None:
    """Blend overlapping tile predictions of one image and stream the result to `sink`.

    Args:
        image: uint8 (H, W, 3) array, or a RowSource read one band of tile rows at a time.
        tile_size, overlap: largest tile side and least overlap, px (overlap < tile_size / 2).
        run_tiles: backend call on a batch of tiles.
        run_batches: splits a row's tile offsets into batches (adaptive size, OOM back-off).
        sink: receives float32 (h, W) strips whose rows cover 0..H-1 exactly once, in order.
        multiple: tile sides are rounded up to this (the model pads to it anyway).
        batch_limit: (tile h, tile w) -> most tiles per batch (a pixel budget), None = no limit.
    """
    source = as_row_source(image)
    height, width = source.shape[:2]
    th, ys = tile_layout(height, tile_size, overlap, multiple)
    tw, xs = tile_layout(width, tile_size, overlap, multiple)
    limit = batch_limit(th, tw) if batch_limit is not None else None
    wy = blend_window(th, overlap if len(ys) > 1 else 0)
    wx = blend_window(tw, overlap if len(xs) > 1 else 0)
    sum_y, sum_x = weight_sums(height, th, ys, wy), weight_sums(width, tw, xs, wx)
    window2d = wy[:, None] * wx[None, :]
    acc = np.zeros((th, width), dtype=np.float32)
    base = 0  # image row held in acc[0]
    for y in ys:
        if y > base:  # rows base..y-1 get no more tiles: emit them and slide the strip down
            _emit(acc, base, y - base, sum_y, sum_x, sink)
            acc[: th - (y - base)] = acc[y - base :]
            acc[th - (y - base) :] = 0.0
            base = y
        _accumulate_row(source.rows(y, th), tw, xs, window2d, acc, run_tiles, run_batches, limit)
    _emit(acc, base, height - base, sum_y, sum_x, sink)


def _accumulate_row(
    band: np.ndarray,
    tw: int,
    xs: list[int],
    window2d: np.ndarray,
    acc: np.ndarray,
    run_tiles: TileRunner,
    run_batches: BatchRunner,
    limit: int | None,
) -> None:
    """Add the windowed predictions of one row of tiles (band: uint8 (th, W, 3)) into acc (th, W)."""

    def run_chunk(chunk: Sequence[int]) -> list[None]:
        tiles = np.stack([band[:, x : x + tw] for x in chunk])
        probs = run_tiles(tiles)
        # Accumulate only after the whole batch succeeded: a retried (OOM) batch adds nothing twice.
        for x, p in zip(chunk, probs, strict=True):
            acc[:, x : x + tw] += p * window2d
        return [None] * len(chunk)

    run_batches(xs, run_chunk, limit)


def _emit(acc: np.ndarray, y0: int, rows: int, sum_y: np.ndarray, sum_x: np.ndarray, sink: StripSink) -> None:
    step = max(1, SINK_PIXELS // acc.shape[1])
    for start in range(0, rows, step):
        n = min(step, rows - start)
        strip = acc[start : start + n] / (sum_y[y0 + start : y0 + start + n, None] * sum_x[None, :])
        np.clip(strip, 0.0, 1.0, out=strip)
        sink.consume(y0 + start, strip)
