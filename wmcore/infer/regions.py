"""Watermark regions of a binary mask (8-connected components) found strip by strip.

`RegionFinder` labels each row strip with `scipy.ndimage.label` (scipy ships with
scikit-image, a project dependency), then joins components that touch across
strip borders with a small union-find, so a mask of any height is handled with
memory of one strip. `TopKMean` likewise reproduces
`wmcore.metrics.image_score` (mean of the top 0.1% probabilities, at least 16
pixels) from strips without a full-size copy of the probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    """One connected watermark region: box [x0, y0, x1, y1) in px (end exclusive) and pixel area."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: int

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


class RegionFinder:
    """Accumulates row strips of a boolean mask; `regions()` returns the merged components."""

    def __init__(self) -> None:
        self._boxes: list[np.ndarray] = []  # per strip: (n, 4) int64 [y0, x0, y1, x1] in image rows
        self._areas: list[np.ndarray] = []
        self._pairs: list[np.ndarray] = []  # (m, 2) global ids that touch across a strip border
        self._next_id = 1  # global ids start at 1; 0 is background
        self._last_row: np.ndarray | None = None  # global labels of the previous strip's last row

    def add(self, y0: int, mask: np.ndarray) -> None:
        """mask: bool (h, W) for rows y0 .. y0 + h - 1 (strips must arrive top to bottom)."""
        if not mask.any():  # nothing to label (most strips of most images): no scipy, no label map
            self._last_row = None
            return
        from scipy import ndimage

        labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        if n:
            slices = ndimage.find_objects(labels)
            boxes = np.array([[s[0].start + y0, s[1].start, s[0].stop + y0, s[1].stop] for s in slices], np.int64)
            self._boxes.append(boxes)
            self._areas.append(np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64))
        first = np.where(labels[0] > 0, labels[0] + (self._next_id - 1), 0)
        if self._last_row is not None:
            self._pairs.append(_touching_pairs(self._last_row, first))
        self._last_row = np.where(labels[-1] > 0, labels[-1] + (self._next_id - 1), 0)
        self._next_id += n

    def regions(self, min_area: int = 1, max_count: int | None = None) -> list[Region]:
        """Components with area >= min_area, largest first, at most max_count."""
        if not self._boxes:
            return []
        boxes, areas = np.concatenate(self._boxes), np.concatenate(self._areas)
        root = _union_roots(len(areas), np.concatenate(self._pairs) if self._pairs else np.empty((0, 2), np.int64))
        lo, hi, total = _merge_by_root(boxes, areas, root)
        idx = np.flatnonzero(total >= min_area)
        idx = idx[np.lexsort((lo[idx, 1], lo[idx, 0], -total[idx]))][:max_count]
        return [
            Region(x0=int(lo[i, 1]), y0=int(lo[i, 0]), x1=int(hi[i, 1]), y1=int(hi[i, 0]), area=int(total[i]))
            for i in idx
        ]


def _touching_pairs(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Pairs of labels 8-adjacent across a row border: (m, 2) unique, 1-based global ids."""
    pairs = []
    for shift in (-1, 0, 1):
        a = upper[max(0, shift) : len(upper) + min(0, shift)]
        b = lower[max(0, -shift) : len(lower) + min(0, -shift)]
        hit = (a > 0) & (b > 0)
        pairs.append(np.stack([a[hit], b[hit]], axis=1))
    out = np.concatenate(pairs)
    return np.unique(out, axis=0) if len(out) else out.reshape(0, 2)


def _union_roots(n: int, pairs: np.ndarray) -> np.ndarray:
    """Root index (0-based) of each of n components after joining `pairs` (1-based ids)."""
    parent = np.arange(n, dtype=np.int64)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs - 1:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    while True:  # flatten every chain to its root, vectorised
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def _merge_by_root(boxes: np.ndarray, areas: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per root: top-left (k, 2) [y0, x0], bottom-right (k, 2) [y1, x1] and total area (k,)."""
    roots, group = np.unique(root, return_inverse=True)
    k = len(roots)
    lo = np.full((k, 2), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.zeros((k, 2), dtype=np.int64)
    np.minimum.at(lo, group, boxes[:, :2])
    np.maximum.at(hi, group, boxes[:, 2:])
    total = np.bincount(group, weights=areas, minlength=k).astype(np.int64)
    return lo, hi, total


def top_k_count(n_pixels: int, top_fraction: float = 0.001, min_pixels: int = 16) -> int:
    """How many top probabilities `wmcore.metrics.image_score` averages for an image of n_pixels."""
    return min(n_pixels, max(min_pixels, int(n_pixels * top_fraction)))


class TopKMean:
    """Mean of the k largest values seen across strips (k fixed up front); equals image_score."""

    def __init__(self, n_pixels: int) -> None:
        self.k = top_k_count(n_pixels)
        self._pool = np.empty(0, dtype=np.float32)

    def add(self, values: np.ndarray) -> None:
        cand = np.concatenate([self._pool, values.ravel().astype(np.float32, copy=False)])
        self._pool = np.partition(cand, cand.size - self.k)[cand.size - self.k :] if cand.size > self.k else cand

    def value(self) -> float:
        return float(self._pool.mean()) if self._pool.size else 0.0
