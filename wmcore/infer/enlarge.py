"""Small images enlarged before the model, their maps brought back to the image's size.

Every shipped model trained on samples 512-1024 px on their long side, so a photo whose short side
is a few hundred pixels shows its marks smaller than any the model learnt; on real photos marked by
other tools, such photos were found half as often as larger ones (bench/results/tool_marks). With
`predict.enlarge_below` = N > 0, an image whose short side is under N px runs enlarged (PIL
bicubic) until its short side reaches N, never past `predict.global_side` on its long side (the
working side: enlarging further would only be shrunk again; with no working side, never past 4N) and
never shrunk; its probability map comes back to the image's own size by area average (PIL box
filter), so masks, scores and regions are those of the image the caller gave. An image read on demand
(a streamed or drafted file) that is to be enlarged is read whole first: it is at most the working
side's square, so the streamed and the whole-image paths give the same masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from wmcore.infer.sinks import ProbabilityMapSink
from wmcore.infer.tiling import RowSource, StripSink

NO_WORKING_SIDE_CAP = 4  # with global_side 0, the long side stays <= this x below


def enlarge_scale(height: int, width: int, below: int, global_side: int) -> float:
    """How much an image of height x width px is enlarged: 1 when its short side is at least `below`
    (or below is 0 = off); else below / short side, capped so the long side stays <= global_side (or
    <= NO_WORKING_SIDE_CAP x below when global_side is 0)."""
    short, long = min(height, width), max(height, width)
    if below <= 0 or short >= below:
        return 1.0
    cap = global_side if global_side > 0 else NO_WORKING_SIDE_CAP * below
    return max(1.0, min(below / short, cap / long))


def enlarged_shape(height: int, width: int, below: int, global_side: int) -> tuple[int, int] | None:
    """(h, w) the image runs at, or None when it runs as it is (see `enlarge_scale`)."""
    scale = enlarge_scale(height, width, below, global_side)
    shape = (round(height * scale), round(width * scale))
    return None if shape == (height, width) else shape


def resize_image(image: np.ndarray | RowSource, shape: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (h, w, 3) with shape = (h, w), PIL bicubic (an image read on demand is read whole)."""
    pixels = image if isinstance(image, np.ndarray) else np.asarray(image.rows(0, image.shape[0]))
    return np.asarray(Image.fromarray(pixels).resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def shrink_map(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float32 probabilities (h, w) -> float32 (H, W) with shape = (H, W), by area average, clipped to [0, 1]."""
    back = Image.fromarray(np.asarray(probs, dtype=np.float32), "F").resize((shape[1], shape[0]), Image.Resampling.BOX)
    return np.clip(np.asarray(back, dtype=np.float32), 0.0, 1.0)


def enlarged_inputs(
    images: Sequence[np.ndarray], below: int, global_side: int
) -> tuple[list[np.ndarray], list[tuple[int, int] | None]]:
    """(images to run, the enlarged shape of each or None): the small images replaced by their enlargements."""
    shapes = [enlarged_shape(im.shape[0], im.shape[1], below, global_side) for im in images]
    return [im if shape is None else resize_image(im, shape) for im, shape in zip(images, shapes, strict=True)], shapes


def with_enlarged(
    images: Sequence[np.ndarray], sinks: Sequence[StripSink], below: int, global_side: int
) -> tuple[list[np.ndarray], list[StripSink], Callable[[], None]]:
    """(images to run, their sinks, finish): the small images replaced by their enlargements, whose maps go
    to float32 sinks of the enlarged size; `finish()`, called once the run is over, hands each of them,
    brought back to its image's size, to the caller's sink in one strip."""
    run_images, shapes = enlarged_inputs(images, below, global_side)
    run_sinks = list(sinks)
    pending: list[tuple[StripSink, ProbabilityMapSink, tuple[int, int]]] = []
    for i, shape in enumerate(shapes):
        if shape is not None:
            run_sinks[i] = ProbabilityMapSink(*shape)
            pending.append((sinks[i], run_sinks[i], images[i].shape[:2]))

    def finish() -> None:
        for sink, big, size in pending:
            sink.consume(0, shrink_map(big.probs, size))

    return run_images, run_sinks, finish


def shrink_passes(
    passes: tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]:
    """Predictor.predict_paths' (native, working or None, refined or None) maps of an enlarged image,
    each brought back to the image's size."""
    native, working, refined = passes
    return (
        shrink_map(native, size),
        None if working is None else shrink_map(working, size),
        None if refined is None else {rule: shrink_map(m, size) for rule, m in refined.items()},
    )
