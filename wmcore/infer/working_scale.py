"""Working-scale inference: a downscaled global view fused with native-resolution tiles, and flip TTA.

Watermarks are sized relative to the whole image: a mark across a 4000 px photo is seen only in
fragments by 512 px native tiles, while a small corner label vanishes when the photo is shrunk
to 512 px. So an image whose long side exceeds `predict.global_side` gets two passes:

- the global view: the image downscaled with PIL (antialiased bilinear, as training's multiscale
  crops) to that long side, run through the same native path (tiled if it exceeds the tile);
- the native pass: today's tiling at full resolution.

The global map (at most global_side^2 float32) is upsampled bilinearly (half-pixel centres, as
torch's `align_corners=False`) strip by strip while the native tiles stream their strips, and the
two are fused per pixel (`FUSION_RULES`): so no full-size float32 map beyond the sink's own is
allocated. An image that fits the global side *is* its own global view: it gets one pass, and
every rule gives exactly the single-path result. Rule "auto" is resolved by the predictor from
the model's meta (`wm evaluate` calibrates it on validation), else "max".

`flip_averaged` wraps a tile runner so every batch is averaged with its horizontally flipped pass
(test-time augmentation; twice the compute, same memory per call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from wmcore.infer.sinks import ProbabilityMapSink
from wmcore.infer.tiling import RowSource, StripSink, TileRunner

log = logging.getLogger(__name__)

FUSION_RULES = ("tiles", "global", "max", "mean")
FALLBACK_RULE = "max"  # catches both large marks (global) and small labels (tiles) when nothing was calibrated

# Runs images of any size through the native path into their sinks (Predictor._run_native).
NativeRunner = Callable[[Sequence[np.ndarray], Sequence[StripSink]], None]


def resolve_rule(configured: str, stored: Any, global_side: int) -> str:
    """The fusion rule a predictor applies.

    Args:
        configured: params.predict.fusion (a rule of FUSION_RULES or "auto").
        stored: the model meta's "fusion" value (any type: checkpoints are untrusted input).
        global_side: params.predict.global_side; 0 = no global view, so only "tiles" is possible.
    Returns: one of FUSION_RULES.
    """
    if global_side == 0:
        return "tiles"
    if configured != "auto":
        return configured
    if stored in FUSION_RULES:
        return str(stored)
    if stored is not None:
        log.warning("model meta fusion=%r is not one of %s; using %s", stored, "/".join(FUSION_RULES), FALLBACK_RULE)
    return FALLBACK_RULE


def global_view_shape(height: int, width: int, global_side: int) -> tuple[int, int] | None:
    """(h, w) of the global view, long side = global_side px; None when the image fits it (or 0 = off)."""
    long_side = max(height, width)
    if global_side <= 0 or long_side <= global_side:
        return None
    scale = global_side / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def downscale(image: np.ndarray | RowSource, shape: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (h, w, 3) with shape = (h, w); PIL bilinear, antialiased when shrinking.

    A streamed image (a RowSource with its own `downscale`) computes the same pixels from its file
    band by band (wmcore.infer.large_images).
    """
    if not isinstance(image, np.ndarray):
        return image.downscale(shape)
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _linear_taps(out_len: int, in_len: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and weight of hi for output positions start..start+count-1 (half-pixel centres)."""
    pos = (np.arange(start, start + count, dtype=np.float64) + 0.5) * (in_len / out_len) - 0.5
    pos = np.clip(pos, 0.0, in_len - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, in_len - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def upsample_rows(small: np.ndarray, height: int, width: int, y0: int, rows: int) -> np.ndarray:
    """Rows y0 .. y0+rows-1 of `small` (h, w) float32 bilinearly resized to (height, width): (rows, width) float32.

    Same values as torch.nn.functional.interpolate(mode="bilinear", align_corners=False) of the
    whole map, computed for one strip only (no full-size map).
    """
    gh, gw = small.shape
    ylo, yhi, wy = _linear_taps(height, gh, y0, rows)
    xlo, xhi, wx = _linear_taps(width, gw, 0, width)
    needed = np.arange(int(ylo.min()), int(yhi.max()) + 1)
    band = small[needed]
    wide = band[:, xlo] * (1.0 - wx) + band[:, xhi] * wx  # (len(needed), width): only the source rows used
    top, bottom = wide[ylo - needed[0]], wide[yhi - needed[0]]
    return (top * (1.0 - wy)[:, None] + bottom * wy[:, None]).astype(np.float32, copy=False)


def fuse(native: np.ndarray, global_probs: np.ndarray, rule: str) -> np.ndarray:
    """Per-pixel fusion of two same-shape float32 maps by `rule` (max, mean, tiles or global)."""
    if rule == "max":
        return np.maximum(native, global_probs)
    if rule == "mean":
        return (native + global_probs) * np.float32(0.5)
    if rule == "tiles":
        return native
    if rule == "global":
        return global_probs
    raise ValueError(f"fusion rule {rule!r} unknown; use one of {FUSION_RULES}")


class FusedStripSink:
    """A StripSink that fuses each native strip with the same rows of the upsampled global map.

    Args:
        inner: receives the fused strips (same rows, same order).
        global_probs: float32 (h, w) probabilities of the global view.
        height, width: the full image size, px.
        rule: "max" or "mean" (any rule of `fuse`).
    """

    def __init__(self, inner: StripSink, global_probs: np.ndarray, height: int, width: int, rule: str) -> None:
        self.inner, self.global_probs, self.rule = inner, global_probs, rule
        self.height, self.width = height, width

    def consume(self, y0: int, probs: np.ndarray) -> None:
        upsampled = upsample_rows(self.global_probs, self.height, self.width, y0, probs.shape[0])
        self.inner.consume(y0, fuse(probs, upsampled, self.rule))


def stream_upsampled(global_probs: np.ndarray, height: int, width: int, sink: StripSink, strip_rows: int) -> None:
    """Feed `sink` the global map upsampled to (height, width), `strip_rows` rows at a time."""
    for y0 in range(0, height, strip_rows):
        rows = min(strip_rows, height - y0)
        sink.consume(y0, upsample_rows(global_probs, height, width, y0, rows))


def run_global_views(images: Sequence[np.ndarray], global_side: int, run_native: NativeRunner) -> dict[int, np.ndarray]:
    """Global-view probabilities {image index: float32 (h, w)} of the images larger than global_side."""
    shapes = {i: global_view_shape(*im.shape[:2], global_side) for i, im in enumerate(images)}
    wanted = [i for i, shape in shapes.items() if shape is not None]
    if not wanted:
        return {}
    sinks = [ProbabilityMapSink(*shapes[i]) for i in wanted]
    run_native([downscale(images[i], shapes[i]) for i in wanted], sinks)
    return {i: s.probs for i, s in zip(wanted, sinks, strict=True)}


def run_working_scale(
    images: Sequence[np.ndarray],
    sinks: Sequence[StripSink],
    run_native: NativeRunner,
    rule: str,
    global_side: int,
    strip_rows: int,
) -> None:
    """Predict `images` into `sinks` with the fusion `rule` (one of FUSION_RULES, already resolved).

    Images that fit global_side, and every image under rule "tiles", take the native path only;
    under "global" the larger ones take only their global view. Memory: the global maps of these
    images (each <= global_side^2 float32) plus what the native path needs (a strip and a tile batch).
    """
    global_maps = {} if rule == "tiles" else run_global_views(images, global_side, run_native)
    native_images: list[np.ndarray] = []
    native_sinks: list[StripSink] = []
    for i, (image, sink) in enumerate(zip(images, sinks, strict=True)):
        height, width = image.shape[:2]
        if i not in global_maps:
            native_images.append(image)
            native_sinks.append(sink)
        elif rule == "global":
            stream_upsampled(global_maps.pop(i), height, width, sink, strip_rows)
        else:
            native_images.append(image)
            native_sinks.append(FusedStripSink(sink, global_maps.pop(i), height, width, rule))
    if native_images:
        run_native(native_images, native_sinks)


def native_and_global_maps(
    images: Sequence[np.ndarray], run_native: NativeRunner, global_side: int
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Both passes kept apart, full size: [(native float32 (H, W), upsampled global (H, W) or None)].

    None where the image fits global_side (its global view is the native image). Used by
    evaluation to score every fusion rule from one native and one global pass per image.
    """
    global_maps = run_global_views(images, global_side, run_native)
    native = [ProbabilityMapSink(*im.shape[:2]) for im in images]
    run_native(images, native)
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    for i, (image, sink) in enumerate(zip(images, native, strict=True)):
        height, width = image.shape[:2]
        small = global_maps.get(i)
        out.append((sink.probs, None if small is None else upsample_rows(small, height, width, 0, height)))
    return out


def flip_averaged(run_tiles: TileRunner) -> TileRunner:
    """A tile runner whose output is the mean of `run_tiles` on the tiles and on their mirror images.

    uint8 (N, h, w, 3) -> float32 (N, h, w): (run(x) + flip(run(flip(x)))) / 2, flip = left-right.
    The two passes are separate calls, so a call never holds more than one batch of activations.
    """

    def run(tiles: np.ndarray) -> np.ndarray:
        probs = run_tiles(tiles)
        mirrored = run_tiles(np.ascontiguousarray(tiles[:, :, ::-1]))
        return (probs + mirrored[:, :, ::-1]) * np.float32(0.5)

    return run
