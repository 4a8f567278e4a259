"""Working-scale inference: a downscaled working view, native refinement where it fires, fusion.

Watermarks are sized relative to the whole image: a mark across a 4000 px photo is seen only in
fragments by native tiles, while a small corner label may shrink to a smudge when the photo is
scaled down. An image whose long side exceeds `predict.global_side` (the working side) gets its
working view: the image downscaled with PIL (antialiased bilinear, as training's multiscale crops)
to that long side, run through the same native path (whole when it fits `predict.tile_size`).
What happens next is the fusion rule (`FUSION_RULES`):

- "global": the working view alone, upsampled. Cost bounded by the working side, not the megapixels.
- "refine" (the default): the working view, plus native-resolution tiles only where the working map
  reaches `predict.refine_threshold` (at most `predict.refine_max_tiles`, the most confident first),
  fused there by max: a small label the working view sees faintly is confirmed at full detail, and
  an image where nothing fires costs one working-scale pass. Only images at least
  `predict.refine_min_scale` times their working view are refined (1 = every larger image).
- "refine_mean": the same passes as "refine", but inside the refined windows the two scales are
  averaged instead of max-fused: a pixel needs both the working view and full detail to call it a
  mark, as "mean" does everywhere, at refine's cost. Measured and left out of the calibrated rules
  (README): it averages down large marks the 512 px windows see only in fragments.
- "tiles": native tiles everywhere (the path before working scale); "max" / "mean": both passes
  everywhere, fused per pixel.

The working map (at most global_side^2 float32) is upsampled bilinearly (half-pixel centres, as
torch's `align_corners=False`) strip by strip as the sink consumes rows, so no full-size float32
map beyond the sink's own is allocated. An image that fits the working side *is* its own working
view: it gets one pass, and every rule gives exactly the single-path result. Rule "auto" is
resolved by the predictor from the model's meta (`wm evaluate` calibrates it on validation), else
"refine".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from wmcore.infer.sinks import ProbabilityMapSink
from wmcore.infer.tiling import RowSource, StripSink, as_row_source, tile_layout

log = logging.getLogger(__name__)

FUSION_RULES = ("tiles", "global", "refine", "refine_mean", "max", "mean")
# Rules that run native windows only where the working map fires (RefineSettings); their in-window fusion.
REFINE_RULES = {"refine": "max", "refine_mean": "mean"}
# Uncalibrated: the working view for large marks, native tiles where it fires for small labels.
FALLBACK_RULE = "refine"
# Rules that need the native pass over the whole image (cost grows with the megapixels).
FULL_NATIVE_RULES = ("tiles", "max", "mean")

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
    """Per-pixel fusion of two same-shape float32 maps by `rule` (max, mean, tiles or global).

    "refine" / "refine_mean" are "max" / "mean" inside their refined windows only (see `RefinedStripSink`).
    """
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


@dataclass(frozen=True)
class RefineSettings:
    """Where native refinement runs: tiles of at most `tile` px (rounded to `multiple`) whose part of the
    working map reaches `threshold`; at most `max_tiles` of them, highest working probability first;
    only in images at least `min_scale` times their working view (long side). `corners`: the four corner
    tiles are refined too, whatever the working map says, ahead of the others (where credits and
    AI-generator labels sit, small enough for the working view to lose)."""

    threshold: float
    max_tiles: int
    tile: int
    overlap: int
    multiple: int
    min_scale: float = 1.0
    corners: bool = False


def refine_windows(global_probs: np.ndarray, height: int, width: int, s: RefineSettings) -> list[tuple[int, int, int, int]]:
    """Native windows (y0, x0, h, w) to refine, in row order: the native tile layout's tiles whose
    area of the working map (h', w') holds a probability >= s.threshold; none when the image is less
    than s.min_scale times its working map."""
    gh, gw = global_probs.shape
    if max(height, width) < s.min_scale * max(gh, gw):
        return []
    if s.max_tiles <= 0 or (not s.corners and float(global_probs.max(initial=0.0)) < s.threshold):
        return []
    th, ys = tile_layout(height, s.tile, s.overlap, s.multiple)
    tw, xs = tile_layout(width, s.tile, s.overlap, s.multiple)
    corners = {(y, x) for y in (ys[0], ys[-1]) for x in (xs[0], xs[-1])} if s.corners else set()
    scored = []
    for y in ys:
        for x in xs:
            area = global_probs[y * gh // height : -(-(y + th) * gh // height), x * gw // width : -(-(x + tw) * gw // width)]
            peak = float(area.max(initial=0.0))
            if peak >= s.threshold or (y, x) in corners:
                scored.append(((y, x) in corners, peak, y, x))
    kept = sorted(scored, reverse=True)[: s.max_tiles]
    return sorted((y, x, th, tw) for _, _, y, x in kept)


class RefinedStripSink:
    """Upsampled working-map strips, fused with the native probabilities inside the refined windows.

    windows: (y0, x0, h, w) native windows; probs: their float32 (h, w) native probabilities.
    fusion: "max" (rule refine: raised to the native probability) or "mean" (rule refine_mean: the
    average of the two; where windows overlap, their native probabilities are max-combined first, so
    every pixel is averaged once).
    """

    def __init__(self, inner: StripSink, windows: list[tuple[int, int, int, int]], probs: list[np.ndarray],
                 fusion: str = "max") -> None:  # fmt: skip
        if fusion not in ("max", "mean"):
            raise ValueError(f"in-window fusion {fusion!r}: expected max or mean")
        self.inner, self.windows, self.probs, self.fusion = inner, windows, probs, fusion

    def _raise_to_windows(self, y0: int, target: np.ndarray) -> bool:
        """Raise the rows y0.. of `target` to the native probabilities where windows cover them (max);
        whether any window did."""
        y1, hit = y0 + target.shape[0], False
        for (wy, wx, wh, ww), p in zip(self.windows, self.probs, strict=True):
            top, bottom = max(y0, wy), min(y1, wy + wh)
            if top < bottom:
                view = target[top - y0 : bottom - y0, wx : wx + ww]
                np.maximum(view, p[top - wy : bottom - wy], out=view)
                hit = True
        return hit

    def consume(self, y0: int, strip: np.ndarray) -> None:
        if self.fusion == "max":
            self._raise_to_windows(y0, strip)
        else:
            native = np.full(strip.shape, -1.0, np.float32)  # -1: no window covers the pixel
            if self._raise_to_windows(y0, native):
                covered = native >= 0.0
                strip[covered] = (strip[covered] + native[covered]) * np.float32(0.5)
        self.inner.consume(y0, strip)


def refine_passes(
    image: np.ndarray | RowSource, global_probs: np.ndarray, run_native: NativeRunner, settings: RefineSettings
) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray]]:
    """(windows, their native float32 probabilities): the native windows where the working map fires.

    The windows are read from the image in row order (a streamed file is read once more) and run
    through the native path (each fits one tile: run whole, same-shape windows batched).
    """
    height, width = image.shape[:2]
    windows = refine_windows(global_probs, height, width, settings)
    if not windows:
        return [], []
    source = as_row_source(image)
    crops = [np.array(source.rows(y, h)[:, x : x + w]) for y, x, h, w in windows]
    sinks = [ProbabilityMapSink(h, w) for _, _, h, w in windows]
    run_native(crops, sinks)
    return windows, [s.probs for s in sinks]


def run_refined(
    image: np.ndarray | RowSource,
    global_probs: np.ndarray,
    sink: StripSink,
    run_native: NativeRunner,
    settings: RefineSettings,
    strip_rows: int,
    rule: str = "refine",
) -> int:
    """Stream the upsampled working map of `image` into `sink`, refined natively where it fires
    (`refine_passes`), fused in the windows as `rule` says (REFINE_RULES). Returns the number of windows."""
    height, width = image.shape[:2]
    windows, probs = refine_passes(image, global_probs, run_native, settings)
    fused = RefinedStripSink(sink, windows, probs, REFINE_RULES[rule])
    stream_upsampled(global_probs, height, width, fused, strip_rows)
    return len(windows)


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
    refine: RefineSettings | None = None,
) -> None:
    """Predict `images` into `sinks` with the fusion `rule` (one of FUSION_RULES, already resolved).

    Images that fit global_side, and every image under rule "tiles", take the native path only;
    under "global" the larger ones take only their working view, under "refine" / "refine_mean" their
    working view plus native windows where it fires (`refine`; None = none). Memory: the working maps of these
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
        elif rule == "global" or (rule in REFINE_RULES and refine is None):
            stream_upsampled(global_maps.pop(i), height, width, sink, strip_rows)
        elif rule in REFINE_RULES:
            run_refined(image, global_maps.pop(i), sink, run_native, refine, strip_rows, rule)
        else:
            native_images.append(image)
            native_sinks.append(FusedStripSink(sink, global_maps.pop(i), height, width, rule))
    if native_images:
        run_native(native_images, native_sinks)


def native_and_global_maps(
    images: Sequence[np.ndarray], run_native: NativeRunner, global_side: int, refine: RefineSettings | None = None
) -> list[tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]]:
    """The passes kept apart, full size: [(native, upsampled working map or None, refined maps or None)].

    None where the image fits global_side (its working view is the native image). The refined maps
    are {rule: what it gives} for each rule of REFINE_RULES, from one set of native windows (None
    without `refine`). Used by evaluation to score every fusion rule from one native, one working and
    the refinement passes of each image.
    """
    global_maps = run_global_views(images, global_side, run_native)
    native = [ProbabilityMapSink(*im.shape[:2]) for im in images]
    run_native(images, native)
    out: list[tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]] = []
    for i, (image, sink) in enumerate(zip(images, native, strict=True)):
        height, width = image.shape[:2]
        small = global_maps.get(i)
        if small is None:
            out.append((sink.probs, None, None))
            continue
        working = upsample_rows(small, height, width, 0, height)  # once: every refine rule starts from it
        refined = None
        if refine is not None:
            windows, probs = refine_passes(image, small, run_native, refine)
            refined = {}
            for rule, fusion in REFINE_RULES.items():
                refined_sink = ProbabilityMapSink(height, width)
                RefinedStripSink(refined_sink, windows, probs, fusion).consume(0, working.copy())
                refined[rule] = refined_sink.probs
        out.append((sink.probs, working, refined))
    return out

