"""What inference keeps of each image's probabilities, fed strip by strip (see tiling.StripSink).

`ProbabilityMapSink` keeps the float32 map (the `Predictor.predict` contract).
`MaskSummarySink` keeps only what `wm predict` writes: an 8-bit probability
map, a binary mask, the has-watermark score, the watermark area fraction and
the regions' boxes, so an 8000x6000 image costs 2 bytes per pixel, not 4+;
given a `MaskWriter` it keeps no map at all and hands each strip's rows on
(streamed PNG files: memory flat in the image size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from wmcore.infer.regions import Region, RegionFinder
from wmcore.metrics import TopKMean


class ProbabilityMapSink:
    """Collects strips into one float32 (H, W) probability map (`.probs`)."""

    def __init__(self, height: int, width: int) -> None:
        self.probs = np.empty((height, width), dtype=np.float32)

    def consume(self, y0: int, probs: np.ndarray) -> None:
        self.probs[y0 : y0 + probs.shape[0]] = probs


class MaskWriter(Protocol):
    """Takes the finished rows of an image's maps, top to bottom (wmcore.infer.large_images.PngMaskWriter)."""

    def write_rows(self, prob_u8: np.ndarray, mask: np.ndarray) -> None:
        """prob_u8: uint8 (h, W) probability * 255; mask: bool (h, W); the next h rows of the image."""


@dataclass
class MaskSummary:
    """The outputs of one image.

    prob_u8: uint8 (H, W) probability * 255 (rounded); mask: bool (H, W) probability >= threshold
    (both None when a MaskWriter took the rows); height, width: image size, px;
    score: has-watermark score in [0, 1] (wmcore.metrics.image_score of the float probabilities);
    area_fraction: share of mask pixels; regions: connected mask regions, largest first;
    gated: the score fell below the sink's gate, so the mask was emptied (area 0, no regions); a
    MaskWriter already holds the ungated rows then, and its caller writes an empty mask instead.
    """

    prob_u8: np.ndarray | None
    mask: np.ndarray | None
    height: int
    width: int
    score: float
    area_fraction: float
    regions: list[Region]
    gated: bool = False


class MaskSummarySink:
    """Turns strips into the uint8 map, the thresholded mask and their statistics.

    writer: None = keep both maps in memory (MaskSummary.prob_u8/.mask); else each strip's rows go to it.
    gate: an image whose has-watermark score is below this gets an empty mask (0 = never).
    """

    def __init__(
        self,
        height: int,
        width: int,
        threshold: float,
        min_region_px: int,
        max_regions: int,
        writer: MaskWriter | None = None,
        gate: float = 0.0,
    ) -> None:
        self.height, self.width, self.writer = height, width, writer
        keep = writer is None
        self.prob_u8 = np.empty((height, width), dtype=np.uint8) if keep else None
        self.mask = np.empty((height, width), dtype=bool) if keep else None
        self.threshold, self.min_region_px, self.max_regions = threshold, min_region_px, max_regions
        self.gate = gate
        self._score = TopKMean(height * width)
        self._regions = RegionFinder()
        self._positive = 0

    def consume(self, y0: int, probs: np.ndarray) -> None:
        rows = slice(y0, y0 + probs.shape[0])
        mask = probs >= self.threshold
        if self.writer is None:
            np.rint(probs * 255.0, out=self.prob_u8[rows], casting="unsafe")
            self.mask[rows] = mask
        else:
            self.writer.write_rows(np.rint(probs * 255.0).astype(np.uint8), mask)
        self._positive += int(mask.sum())
        self._score.add(probs)
        self._regions.add(y0, mask)

    def finish(self) -> MaskSummary:
        score = self._score.value()
        gated = score < self.gate
        if gated and self.mask is not None:
            self.mask[:] = False
        return MaskSummary(
            prob_u8=self.prob_u8,
            mask=self.mask,
            height=self.height,
            width=self.width,
            score=score,
            area_fraction=0.0 if gated else self._positive / max(1, self.height * self.width),
            regions=[] if gated else self._regions.regions(self.min_region_px, self.max_regions),
            gated=gated,
        )
