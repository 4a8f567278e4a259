"""Watermark regions of a binary mask (8-connected components) found strip by strip.

`RegionFinder` labels each row strip from its horizontal runs (numpy only: a
`wm predict` process that finds a mark does not pay scipy's ~0.3 s import), then
joins components that touch across strip borders with the same vectorised
union-find, so a mask of any height is handled with memory of one strip (likewise, the has-watermark
score's top-k mean is kept over strips by `wmcore.metrics.TopKMean`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StripLabels:
    """8-connected components of one mask strip: what `RegionFinder` keeps of a label map.

    boxes (n, 4) int64 [y0, x0, y1, x1] (end exclusive, strip rows), areas (n,) int64, and the label
    (1..n, 0 = background) of every pixel of the strip's first and last rows.
    """

    boxes: np.ndarray
    areas: np.ndarray
    first_row: np.ndarray
    last_row: np.ndarray


def label_strip(mask: np.ndarray) -> StripLabels:
    """8-connected components of a bool (h, w) mask from its horizontal runs, vectorised.

    Runs come from one diff of the zero-padded mask; a run touches a run of the row above when
    their column spans overlap or meet diagonally (`a.x1 >= b.x0` and `a.x0 <= b.x1`, ends
    exclusive). Runs of a row are sorted and disjoint, so each run's partners above are one
    contiguous index range, found by two `searchsorted` calls on row-major keys; the pairs then
    go through `_union_roots`. Same components as `scipy.ndimage.label(mask, ones((3, 3)))`.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)  # (h, w + 1): +1 where a run starts, -1 one past its end
    row, x0 = np.nonzero(step == 1)
    x1 = np.nonzero(step == -1)[1]  # row-major order: the i-th end closes the i-th start
    span = w + 2  # row * span + column is monotonic over runs (row-major, columns < span)
    above = (row - 1) * span
    first = np.searchsorted(row * span + x1, above + x0, side="left")  # first run above with x1 >= b.x0
    last = np.searchsorted(row * span + x0, above + x1, side="right") - 1  # last run above with x0 <= b.x1
    count = np.where(row > 0, np.maximum(last - first + 1, 0), 0)
    total = int(count.sum())
    below = np.repeat(np.arange(len(row)), count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    pairs = np.stack([np.repeat(first, count) + offset, below], axis=1) + 1  # 1-based run ids
    root = _union_roots(len(row), pairs)
    run_boxes = np.stack([row, x0, row + 1, x1], axis=1).astype(np.int64)
    lo, hi, areas, group = _merge_by_root(run_boxes, (x1 - x0).astype(np.int64), root)
    component = group + 1  # 1..n

    def paint(y: int) -> np.ndarray:
        on = row == y
        edges = np.zeros(w + 1, dtype=np.int64)
        np.add.at(edges, x0[on], component[on])
        np.subtract.at(edges, x1[on], component[on])
        return np.cumsum(edges)[:w]  # runs of a row are disjoint: the id inside each, 0 between

    return StripLabels(np.concatenate([lo, hi], axis=1), areas, paint(0), paint(h - 1))


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
        if not mask.any():  # nothing to label (most strips of most images)
            self._last_row = None
            return
        strip = label_strip(mask)
        n = len(strip.areas)
        boxes = strip.boxes.copy()
        boxes[:, [0, 2]] += y0
        self._boxes.append(boxes)
        self._areas.append(strip.areas)
        first = np.where(strip.first_row > 0, strip.first_row + (self._next_id - 1), 0)
        if self._last_row is not None:
            self._pairs.append(_touching_pairs(self._last_row, first))
        self._last_row = np.where(strip.last_row > 0, strip.last_row + (self._next_id - 1), 0)
        self._next_id += n

    def regions(self, min_area: int = 1, max_count: int | None = None) -> list[Region]:
        """Components with area >= min_area, largest first, at most max_count."""
        if not self._boxes:
            return []
        boxes, areas = np.concatenate(self._boxes), np.concatenate(self._areas)
        root = _union_roots(len(areas), np.concatenate(self._pairs) if self._pairs else np.empty((0, 2), np.int64))
        lo, hi, total, _ = _merge_by_root(boxes, areas, root)
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
    """Root (the smallest member, 0-based) of each of n components after joining `pairs` (1-based ids).

    Vectorised hooking and pointer jumping: each round hooks the larger of two roots under the
    smaller for every pair still split, then flattens every chain, so a mask of a million runs
    costs a few numpy passes, not a Python loop per pair.
    """
    parent = np.arange(n, dtype=np.int64)
    a, b = (pairs - 1).T
    while True:
        ra, rb = parent[a], parent[b]
        split = ra != rb
        if not split.any():
            return parent
        lo, hi = np.minimum(ra[split], rb[split]), np.maximum(ra[split], rb[split])
        np.minimum.at(parent, hi, lo)  # hi is a root (chains are flat): hook it under the smallest partner
        while True:  # flatten every chain to its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def _merge_by_root(boxes: np.ndarray, areas: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per root: top-left (k, 2) [y0, x0], bottom-right (k, 2) [y1, x1], total area (k,) and each member's group.

    Groups are numbered 0..k-1 in the order of their roots; `root` comes from `_union_roots`
    (every root is its own root), so the numbering is one cumulative sum, no sort.
    """
    is_root = root == np.arange(len(root))
    group = (np.cumsum(is_root) - 1)[root]
    k = int(is_root.sum())
    lo = np.full((k, 2), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.zeros((k, 2), dtype=np.int64)
    np.minimum.at(lo, group, boxes[:, :2])
    np.maximum.at(hi, group, boxes[:, 2:])
    total = np.bincount(group, weights=areas, minlength=k).astype(np.int64)
    return lo, hi, total, group
