"""Tiling, strip sinks and region finding: exact answers with fake per-pixel models, no network weights."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from wmcore.infer.regions import RegionFinder, label_strip
from wmcore.infer.sinks import MaskSummarySink, ProbabilityMapSink
from wmcore.infer.tiling import blend_window, predict_tiled, tile_layout
from wmcore.metrics.image import TopKMean, image_score, top_k_count


def run_in_batches(items, fn, limit=None, size=3):
    size = min(size, limit or size)
    out = []
    for i in range(0, len(items), size):
        out.extend(fn(items[i : i + size]))
    return out


def red_channel_model(tiles: np.ndarray) -> np.ndarray:
    """A 'model' whose output at a pixel depends on that pixel only: tiling must not change it."""
    return tiles[..., 0].astype(np.float32) / 255.0


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "multiple", "expected"),
    [
        (64, 64, 16, 1, (64, [0])),
        (30, 64, 16, 16, (30, [0])),
        (100, 64, 16, 1, (58, [0, 42])),  # 2 tiles shrunk to the overlap's need
        (100, 64, 16, 16, (64, [0, 36])),  # rounded up to the model's padding unit
        (640, 512, 64, 16, (352, [0, 288])),
        (1024, 512, 64, 16, (384, [0, 320, 640])),
        (200, 64, 16, 1, (62, [0, 46, 92, 138])),
    ],
)
def test_tile_layout_fewest_even_tiles(length, tile, overlap, multiple, expected):
    size, starts = tile_layout(length, tile, overlap, multiple)
    assert (size, starts) == expected
    assert size <= max(tile, length) and starts[0] == 0 and starts[-1] + size == length
    gaps = np.diff(starts)
    assert np.all(size - gaps >= overlap - 1)  # neighbours overlap by the requested amount (+-1 px rounding)


def test_blend_window_is_positive_symmetric_and_flat_in_the_middle():
    w = blend_window(64, 16)
    assert w.min() > 0 and np.allclose(w, w[::-1])
    assert np.all(w[16:48] == 1.0) and np.all(np.diff(w[:16]) > 0)
    assert np.all(blend_window(10, 0) == 1.0)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (40, 50), (64, 64), (65, 64), (150, 230), (97, 301), (300, 17)])
def test_tiled_blend_reproduces_a_per_pixel_model_exactly(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    sink = ProbabilityMapSink(height, width)
    predict_tiled(image, 64, 16, red_channel_model, run_in_batches, sink)
    np.testing.assert_allclose(sink.probs, image[..., 0] / 255.0, atol=1e-6)


def test_strips_arrive_in_order_and_cover_every_row_once():
    image = np.zeros((300, 90, 3), np.uint8)
    seen = []

    class Recorder:
        def consume(self, y0, probs):
            seen.append((y0, probs.shape[0]))

    predict_tiled(image, 64, 16, red_channel_model, run_in_batches, Recorder())
    rows = [y for y0, h in seen for y in range(y0, y0 + h)]
    assert rows == list(range(300))


def test_mask_summary_sink_matches_full_map_statistics():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (200, 130, 3), dtype=np.uint8)
    full = image[..., 0] / np.float32(255.0)
    sink = MaskSummarySink(200, 130, threshold=0.7, min_region_px=1, max_regions=10_000)
    predict_tiled(image, 64, 16, red_channel_model, run_in_batches, sink)
    result = sink.finish()
    assert result.score == pytest.approx(image_score(full), abs=1e-6)
    assert result.area_fraction == pytest.approx(float((full >= 0.7).mean()), abs=1e-9)
    np.testing.assert_array_equal(result.prob_u8, image[..., 0])
    labels, n = ndimage.label(full >= 0.7, structure=np.ones((3, 3)))
    assert len(result.regions) == n


@pytest.mark.parametrize("strip", [1, 3, 7, 50])
def test_region_finder_joins_components_across_strips(strip):
    mask = np.zeros((50, 40), bool)
    mask[2:20, 3:9] = True  # a tall box crossing several strips
    mask[30:33, 30:38] = True  # a small bar
    for i in range(10):  # a diagonal line: 8-connected only
        mask[35 + i, 5 + i] = True
    finder = RegionFinder()
    for y in range(0, 50, strip):
        finder.add(y, mask[y : y + strip])
    boxes = [(r.as_list(), r.area) for r in finder.regions()]
    assert boxes == [([3, 2, 9, 20], 108), ([30, 30, 38, 33], 24), ([5, 35, 15, 45], 10)]


@pytest.mark.parametrize("strip", [1, 2, 5])
def test_region_finder_with_empty_strips_between_marks_equals_whole_mask_labelling(strip):
    rng = np.random.default_rng(strip)
    mask = rng.random((60, 50)) > 0.93  # scattered specks, 8-connected clusters
    mask[10:20] = False  # whole empty strips between marked ones
    mask[40:41] = False
    mask[21:30, 20] = True  # a bar that starts right under the empty band
    finder = RegionFinder()
    for y in range(0, 60, strip):
        finder.add(y, mask[y : y + strip])
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    expected = sorted((int((labels == i).sum()), s[1].start, s[0].start) for i, s in enumerate(ndimage.find_objects(labels), 1))
    got = sorted((r.area, r.x0, r.y0) for r in finder.regions())
    assert n > 10 and got == expected


@pytest.mark.parametrize("seed", range(6))
def test_label_strip_equals_scipy_labelling(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    mask = rng.random((h, w)) < [0.05, 0.3, 0.5, 0.6, 0.9, 1.0][seed]  # specks to solid
    got = label_strip(mask)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    expected = sorted((int((labels == i).sum()), s[0].start, s[1].start, s[0].stop, s[1].stop)
                      for i, s in enumerate(ndimage.find_objects(labels), 1))  # fmt: skip
    assert sorted((int(a), *map(int, b)) for a, b in zip(got.areas, got.boxes, strict=True)) == expected
    for ours, theirs in ((got.first_row, labels[0]), (got.last_row, labels[-1])):  # same partition of the edge rows
        assert np.array_equal(ours > 0, theirs > 0)
        pairs = set(zip(ours[ours > 0].tolist(), theirs[theirs > 0].tolist(), strict=True))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_region_finder_does_not_import_scipy():
    code = ("import sys, numpy as np; from wmcore.infer.regions import RegionFinder; f = RegionFinder(); "
            "m = np.zeros((40, 40), bool); m[5:9, 5:30] = True; f.add(0, m); assert len(f.regions()) == 1; "
            "assert 'scipy' not in sys.modules, 'scipy imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_region_finder_filters_small_and_caps_count():
    mask = np.zeros((20, 20), bool)
    mask[0:5, 0:5] = True
    mask[10, 10] = True
    mask[15:17, 15:17] = True
    finder = RegionFinder()
    finder.add(0, mask)
    assert [r.area for r in finder.regions(min_area=2)] == [25, 4]
    assert [r.area for r in finder.regions(max_count=1)] == [25]
    assert RegionFinder().regions() == []


@pytest.mark.parametrize(("height", "width", "strip"), [(4, 4, 1), (100, 100, 7), (300, 400, 64), (768, 1024, 512)])
@pytest.mark.parametrize("kind", ["uniform", "sparse", "ties", "lattice", "rising"])
def test_top_k_mean_over_strips_and_image_score_equal_a_sorted_top_k(height, width, strip, kind):
    rng = np.random.default_rng(width)
    probs = rng.random((height, width), dtype=np.float32)
    if kind == "sparse":  # a clean photo with one small mark: almost all zeros, a few high values
        probs = np.where(probs > 0.999, probs, np.float32(0.0))
    elif kind == "ties":  # probabilities as stored in a uint8 map: many equal values at the cut
        probs = np.round(probs * 8).astype(np.float32) / np.float32(8)
    elif kind == "lattice":  # the highest values exactly where a strided subsample looks, low elsewhere
        flat = probs.ravel() * np.float32(0.5)
        flat[:: TopKMean.SUBSAMPLE] += np.float32(0.5)
        probs = flat.reshape(height, width)
    elif kind == "rising":  # every strip beats the one before: the held top k is replaced each time
        probs = (probs * 0.1 + np.linspace(0, 0.9, height, dtype=np.float32)[:, None]).astype(np.float32)
    k = top_k_count(height * width)
    reference = float(np.sort(probs.ravel())[-k:].astype(np.float64).mean())  # the definition, by a full sort
    acc = TopKMean(height * width)
    for y in range(0, height, strip):
        acc.add(probs[y : y + strip])
    assert acc.value() == pytest.approx(reference, abs=1e-6)
    assert image_score(probs) == pytest.approx(reference, abs=1e-6)  # one piece: the whole map
