"""Working-scale inference: global view + native tiles fused, flip TTA, and the fusion rule calibrated by evaluate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.fixtures import make_tiny_prepared
from wmcore.config import ConfigError, Params, validate
from wmcore.errors import WmError
from wmcore.evaluate import run as evaluate_run
from wmcore.evaluate.fusion import choose_rule, rule_maps
from wmcore.evaluate.run import run_evaluation
from wmcore.evaluate.samples import load_split
from wmcore.infer.predictor import Predictor, get_predictor
from wmcore.infer.sinks import ProbabilityMapSink
from wmcore.infer.torch_backend import TorchBackend
from wmcore.infer.working_scale import (
    FUSION_RULES,
    REFINE_RULES,
    RefinedStripSink,
    RefineSettings,
    global_view_shape,
    refine_windows,
    resolve_rule,
    upsample_rows,
)
from wmcore.metrics import best_threshold, threshold_histograms
from wmcore.model.checkpoint import checkpoint_dict, load_checkpoint, save_checkpoint
from wmcore.model.unet import UNet
from wmcore.tracking.sink import NullLogger

pytestmark = pytest.mark.usefixtures("fresh_predictor_cache")


def make_model(path: Path, meta: dict | None = None, symmetric: bool = False) -> UNet:
    """A tiny UNet (base 4, depth 2) with random BatchNorm statistics (so its output depends visibly on
    the input), saved at `path`. symmetric: every kernel mirrored onto itself, so the network is
    exactly left-right equivariant on widths that are multiples of 4."""
    torch.manual_seed(0)
    net = UNet(base_width=4, depth=2).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
            if symmetric and isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
        # Untrained logits hardly vary: rescale the 1x1 head to logits of std 2 around 0 on a sample image.
        logits = net(torch.from_numpy(photo(64, 64, seed=99)).permute(2, 0, 1)[None].float() / 255.0)
        net.head.weight.mul_(2.0 / float(logits.std()))
        net.head.bias.sub_(float(logits.median())).mul_(2.0 / float(logits.std()))
    save_checkpoint(path, checkpoint_dict(net, meta or {}))
    return net


def params_for(tmp_path: Path, evaluate: dict | None = None, **predict: object) -> Params:
    return validate(
        {
            "base": {"threads": 1, "device": "cpu"},
            "paths": {"cache_dir": str(tmp_path / "cache"), "prepared": str(tmp_path / "prepared"),
                      "corpus": str(tmp_path / "corpus"),
                      "train_dir": str(tmp_path / "train"), "evaluate_dir": str(tmp_path / "evaluate")},
            "predict": {"tile_size": 64, "tile_overlap": 16, "global_side": 256, **predict},
            "evaluate": evaluate or {"n_overlay": 0},
            "tracking": {"enabled": False},
        }
    )  # fmt: skip


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 60 * np.sin(xx / 9.0)[..., None] * np.cos(yy / 13.0)[..., None] + rng.normal(0, 25, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def reference(net: UNet, image: np.ndarray) -> np.ndarray:
    """The model on the whole image in one call: float32 (H, W)."""
    with torch.inference_mode():
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
        return torch.sigmoid(net(x))[0, 0].numpy()


class CountingBackend:
    """A TorchBackend that counts the pixels it was asked to run (cost of a call)."""

    def __init__(self, inner: TorchBackend) -> None:
        self.inner, self.name, self.multiple = inner, inner.name, inner.multiple
        self.pixels = 0

    def run(self, tiles: np.ndarray) -> np.ndarray:
        self.pixels += tiles.shape[0] * tiles.shape[1] * tiles.shape[2]
        return self.inner.run(tiles)

    def estimate_mb(self, n: int, height: int, width: int) -> float:
        return self.inner.estimate_mb(n, height, width)


def counting_predictor(net: UNet, params: Params, fusion: str) -> tuple[Predictor, CountingBackend]:
    backend = CountingBackend(TorchBackend(net, torch.device("cpu")))
    return Predictor(backend, params, 0.5, 0.5, f"test-{fusion}", torch.device("cpu"), fusion), backend


# --------------------------------------------------------------------------- fusion vs single path


@pytest.mark.parametrize("rule", FUSION_RULES)
@pytest.mark.parametrize(("h", "w"), [(40, 50), (64, 64), (150, 230), (256, 97)])
def test_image_within_global_side_is_the_single_path_exactly_and_run_once(tmp_path, rule, h, w):
    net = make_model(tmp_path / "m.pt")
    params = params_for(tmp_path)  # tile 64, global_side 256: all these images fit the global side
    image = photo(h, w)
    single, single_cost = counting_predictor(net, params, "tiles")
    fused, fused_cost = counting_predictor(net, params, rule)
    (expected,), (got,) = single.predict([image]), fused.predict([image])
    np.testing.assert_array_equal(got, expected)
    assert fused_cost.pixels == single_cost.pixels > 0  # one pass, no double cost
    if max(h, w) <= 64:  # fits one tile: the untiled model itself
        np.testing.assert_allclose(got, reference(net, image), atol=1e-5)


def test_global_view_of_a_large_image_is_the_upsampled_downscaled_prediction(tmp_path):
    net = make_model(tmp_path / "m.pt")
    params = params_for(tmp_path, global_side=60)
    image = photo(300, 200, seed=3)
    assert global_view_shape(300, 200, 60) == (60, 40)
    small = np.asarray(Image.fromarray(image).resize((40, 60), Image.Resampling.BILINEAR))
    expected = F.interpolate(torch.from_numpy(reference(net, small))[None, None], size=(300, 200), mode="bilinear")
    predictor, _ = counting_predictor(net, params, "global")
    (probs,) = predictor.predict([image])
    assert probs.shape == (300, 200) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected[0, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize("rule", ["max", "mean"])
def test_fused_map_combines_tiles_and_global_pixel_by_pixel(tmp_path, rule):
    net = make_model(tmp_path / "m.pt")
    params = params_for(tmp_path, global_side=60)
    images = [photo(300, 200, seed=3), photo(90, 70, seed=4), photo(50, 50, seed=5)]  # last one fits: native only
    tiles = counting_predictor(net, params, "tiles")[0].predict(images)
    wide = counting_predictor(net, params, "global")[0].predict(images)
    fused = counting_predictor(net, params, rule)[0].predict(images)
    for t, g, f in zip(tiles, wide, fused, strict=True):
        expected = np.maximum(t, g) if rule == "max" else (t + g) / 2
        assert f.shape == t.shape
        np.testing.assert_allclose(f, expected, atol=1e-6)
    np.testing.assert_array_equal(fused[2], tiles[2])
    assert not np.allclose(tiles[0], wide[0], atol=1e-3)  # the two passes really differ here


# --------------------------------------------------------------------------- native refinement


def test_refine_windows_are_the_native_tiles_where_the_working_map_fires():
    working = np.zeros((40, 60), np.float32)  # a 400x600 image seen at 1/10
    working[35:38, 50:55] = 0.6  # a faint small mark near the bottom-right corner
    working[5, 5] = 0.2  # below the refine threshold
    settings = RefineSettings(threshold=0.3, max_tiles=8, tile=128, overlap=16, multiple=4)
    windows = refine_windows(working, 400, 600, settings)
    assert windows and all(h <= 128 and w <= 128 for _, _, h, w in windows)
    for y, x, h, w in windows:  # each window covers part of the mark (rows 350-380, cols 500-550)
        assert y < 380 and y + h > 350 and x < 550 and x + w > 500
    assert refine_windows(np.full((40, 60), 0.29, np.float32), 400, 600, settings) == []
    capped = RefineSettings(threshold=0.3, max_tiles=1, tile=128, overlap=16, multiple=4)
    working[2, 2] = 0.9  # the most confident tile is kept first
    (only,) = refine_windows(working, 400, 600, capped)
    assert only[0] == 0 and only[1] == 0


def test_refine_corners_adds_the_four_corner_tiles_first_even_where_nothing_fires():
    settings = RefineSettings(threshold=0.3, max_tiles=8, tile=128, overlap=16, multiple=4, corners=True)
    quiet = np.zeros((40, 60), np.float32)  # a 400x600 image where the working view sees nothing
    windows = refine_windows(quiet, 400, 600, settings)
    assert len(windows) == 4
    assert {(y == 0, x == 0, y + h == 400, x + w == 600) for y, x, h, w in windows} == {
        (True, True, False, False), (True, False, False, True), (False, True, True, False), (False, False, True, True)}
    working = quiet.copy()
    working[20, 30] = 0.9  # the centre fires: the (overlapping) tiles over it join the corners
    fired = refine_windows(working, 400, 600, settings)
    extra = set(fired) - set(windows)
    assert set(windows) < set(fired) and extra
    assert all(y <= 205 and y + h >= 200 and x <= 305 and x + w >= 300 for y, x, h, w in extra)
    capped = dataclasses.replace(settings, max_tiles=4)  # corners come first under the cap
    assert refine_windows(working, 400, 600, capped) == windows
    assert refine_windows(quiet, 400, 600, dataclasses.replace(settings, corners=False)) == []


@pytest.mark.parametrize(("scale", "min_scale", "refined"), [(10, 1.5, True), (1.25, 1.5, False), (1.5, 1.5, True),
                                                             (1.25, 1.0, True)])  # fmt: skip
def test_refinement_runs_only_in_images_shrunk_at_least_min_scale_times(scale, min_scale, refined):
    working = np.zeros((40, 60), np.float32)
    working[35:38, 50:55] = 0.9  # fires clearly
    settings = RefineSettings(threshold=0.3, max_tiles=8, tile=64, overlap=8, multiple=4, min_scale=min_scale)
    windows = refine_windows(working, round(40 * scale), round(60 * scale), settings)
    assert bool(windows) is refined


def test_refine_runs_native_tiles_only_where_the_working_map_fires(tmp_path, monkeypatch):
    net = make_model(tmp_path / "m.pt")
    image = photo(300, 200, seed=3)
    wide = counting_predictor(net, params_for(tmp_path, global_side=60), "global")[0].predict([image])[0]
    # a threshold above every working probability: refine is the working view alone, at its cost
    quiet, quiet_cost = counting_predictor(net, params_for(tmp_path, global_side=60), "refine")
    quiet.refine = dataclasses.replace(quiet.refine, threshold=float(wide.max()) + 1e-3)
    global_only, global_cost = counting_predictor(net, params_for(tmp_path, global_side=60), "global")
    np.testing.assert_array_equal(quiet.predict([image])[0], global_only.predict([image])[0])
    assert quiet_cost.pixels == global_cost.pixels == 60 * 40
    # a threshold met in part of the image: native tiles there only, fused by max with the working map
    thr = float(np.quantile(wide, 0.9))
    params = params_for(tmp_path, global_side=60, refine_threshold=thr)
    refined, refined_cost = counting_predictor(net, params, "refine")
    (got,) = refined.predict([image])
    tiles = counting_predictor(net, params, "tiles")[0].predict([image])[0]
    assert global_cost.pixels < refined_cost.pixels < global_cost.pixels + 300 * 200
    changed = got > wide + 1e-6
    assert changed.any() and np.all(got >= wide - 1e-6)
    small = np.asarray(Image.fromarray(image).resize((40, 60), Image.Resampling.BILINEAR))
    working = reference(net, small)
    windows = refine_windows(working, 300, 200, refined.refine)
    inside, expected = np.zeros((300, 200), bool), wide.copy()
    for y, x, h, w in windows:  # overlapping windows: the max of all passes seen at a pixel
        inside[y : y + h, x : x + w] = True
        np.maximum(expected[y : y + h, x : x + w], reference(net, image[y : y + h, x : x + w]),
                   out=expected[y : y + h, x : x + w])  # fmt: skip
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not changed[~inside].any() and not inside.all()
    assert not np.allclose(got, tiles, atol=1e-3)  # not the full native pass


def test_refine_mean_averages_the_same_windows_with_the_working_map_at_refines_cost(tmp_path):
    net = make_model(tmp_path / "m.pt")
    image = photo(300, 200, seed=3)
    wide = counting_predictor(net, params_for(tmp_path, global_side=60), "global")[0].predict([image])[0]
    params = params_for(tmp_path, global_side=60, refine_threshold=float(np.quantile(wide, 0.9)))
    refined, refined_cost = counting_predictor(net, params, "refine")
    averaged, averaged_cost = counting_predictor(net, params, "refine_mean")
    (got,) = averaged.predict([image])
    refined.predict([image])
    assert averaged_cost.pixels == refined_cost.pixels  # the same native windows, nothing more
    small = np.asarray(Image.fromarray(image).resize((40, 60), Image.Resampling.BILINEAR))
    windows = refine_windows(reference(net, small), 300, 200, averaged.refine)
    native, inside = np.full((300, 200), -1.0, np.float32), np.zeros((300, 200), bool)
    for y, x, h, w in windows:  # overlapping windows: their max, then averaged once with the working map
        inside[y : y + h, x : x + w] = True
        np.maximum(native[y : y + h, x : x + w], reference(net, image[y : y + h, x : x + w]),
                   out=native[y : y + h, x : x + w])  # fmt: skip
    expected = np.where(inside, (wide + native) / 2, wide)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert inside.any() and not inside.all()
    # the evaluation's passes give every refine rule from one set of windows, equal to what predict gives
    (native_map, working, maps), = refined.predict_paths([image])
    np.testing.assert_allclose(maps["refine_mean"], got, atol=1e-5)
    np.testing.assert_allclose(maps["refine"], refined.predict([image])[0], atol=1e-5)
    assert set(rule_maps(native_map, working, maps)) == set(FUSION_RULES)


def test_refined_strip_sink_averages_each_pixel_once_where_windows_overlap():
    sink = ProbabilityMapSink(4, 6)
    windows = [(0, 0, 4, 4), (0, 2, 4, 4)]  # columns 2-3 covered twice
    probs = [np.full((4, 4), 0.8, np.float32), np.full((4, 4), 0.4, np.float32)]
    working = np.full((4, 6), 0.2, np.float32)
    RefinedStripSink(sink, windows, probs, "mean").consume(0, working[:2].copy())
    RefinedStripSink(sink, windows, probs, "mean").consume(2, working[2:].copy())
    np.testing.assert_allclose(sink.probs[0], [0.5, 0.5, 0.5, 0.5, 0.3, 0.3])
    maxed = ProbabilityMapSink(4, 6)
    RefinedStripSink(maxed, windows, probs, "max").consume(0, working.copy())
    np.testing.assert_allclose(maxed.probs[0], [0.8, 0.8, 0.8, 0.8, 0.4, 0.4])
    with pytest.raises(ValueError, match="median"):
        RefinedStripSink(sink, windows, probs, "median")


def test_masks_of_images_scored_below_the_image_threshold_are_empty(tmp_path):
    net = make_model(tmp_path / "m.pt")
    image = photo(120, 90, seed=7)
    params = params_for(tmp_path, global_side=60, min_region_pixels=1)
    predictor, _ = counting_predictor(net, params, "global")
    (probs,) = predictor.predict([image])
    thr = float(np.median(probs))
    (summary,) = predictor.predict_masks([image], threshold=thr)
    assert summary.mask.any() and not summary.gated
    predictor.image_threshold = summary.score + 1e-3  # called clean: no mask, no regions
    (gated,) = predictor.predict_masks([image], threshold=thr)
    assert gated.gated and not gated.mask.any() and gated.area_fraction == 0.0 and gated.regions == []
    assert gated.score == summary.score
    ungated = counting_predictor(net, params_for(tmp_path, global_side=60, min_region_pixels=1, gate_masks=False),
                                 "global")[0]  # fmt: skip
    ungated.image_threshold = predictor.image_threshold
    assert ungated.predict_masks([image], threshold=thr)[0].mask.any()


class StripRecorder:
    def __init__(self) -> None:
        self.rows: list[tuple[int, int]] = []

    def consume(self, y0: int, probs: np.ndarray) -> None:
        self.rows.append((y0, probs.shape[0]))


@pytest.mark.parametrize("rule", ["global", "max"])
def test_fused_maps_stream_in_strips_covering_every_row_once(tmp_path, rule):
    net = make_model(tmp_path / "m.pt")
    predictor, _ = counting_predictor(net, params_for(tmp_path, global_side=60), rule)
    sink = StripRecorder()
    predictor._run([photo(400, 90)], [sink])
    covered = [y for y0, n in sink.rows for y in range(y0, y0 + n)]
    assert covered == list(range(400))
    assert max(n for _, n in sink.rows) <= 64  # strips of at most a tile: no full-size map handed over


def test_predict_masks_applies_the_threshold_to_the_fused_map(tmp_path):
    net = make_model(tmp_path / "m.pt")
    params = params_for(tmp_path, global_side=60, min_region_pixels=1)
    predictor, _ = counting_predictor(net, params, "max")
    image = photo(180, 130, seed=7)
    (probs,) = predictor.predict([image])
    thr = float(np.median(probs))
    (summary,) = predictor.predict_masks([image], threshold=thr)
    np.testing.assert_array_equal(summary.mask, probs >= thr)


@pytest.mark.parametrize(("height", "width", "small"), [(300, 200, (60, 40)), (97, 33, (8, 5)), (64, 64, (64, 64))])
@pytest.mark.parametrize("strip", [1, 7, 64])
def test_upsample_rows_matches_torch_bilinear(height, width, small, strip):
    rng = np.random.default_rng(0)
    low = rng.random(small, dtype=np.float32)
    expected = F.interpolate(torch.from_numpy(low)[None, None], size=(height, width), mode="bilinear")[0, 0].numpy()
    got = np.concatenate(
        [upsample_rows(low, height, width, y, min(strip, height - y)) for y in range(0, height, strip)]
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)  # torch rounds its source coordinates in float32


# --------------------------------------------------------------------------- rule resolution


@pytest.mark.parametrize(
    ("configured", "stored", "global_side", "expected"),
    [("auto", "global", 512, "global"), ("auto", "mean", 512, "mean"), ("auto", None, 512, "refine"),
     ("auto", "bogus", 512, "refine"), ("auto", 3, 512, "refine"), ("auto", "refine", 512, "refine"),
     ("tiles", "global", 512, "tiles"),
     ("mean", "global", 512, "mean"), ("auto", "global", 0, "tiles")],
)  # fmt: skip
def test_resolve_rule(configured, stored, global_side, expected):
    assert resolve_rule(configured, stored, global_side) == expected


@pytest.mark.parametrize(("meta_rule", "expected"), [("global", "global"), ("tiles", "tiles"), (None, "refine")])
def test_auto_reads_the_rule_stored_in_the_model_meta(tmp_path, meta_rule, expected):
    meta = {"threshold": 0.4} | ({"fusion": meta_rule} if meta_rule else {})
    make_model(tmp_path / "m.pt", meta=meta)
    image = photo(200, 150, seed=2)
    auto = get_predictor(tmp_path / "m.pt", params_for(tmp_path, global_side=60, fusion="auto"))
    explicit = get_predictor(tmp_path / "m.pt", params_for(tmp_path, global_side=60, fusion=expected))
    assert auto.fusion == expected and auto.threshold == 0.4
    np.testing.assert_array_equal(auto.predict([image])[0], explicit.predict([image])[0])


def test_unknown_fusion_rule_for_one_call_is_a_clear_error(tmp_path):
    net = make_model(tmp_path / "m.pt")
    predictor, _ = counting_predictor(net, params_for(tmp_path), "max")
    with pytest.raises(WmError, match="fusion rule 'union' unknown"):
        predictor.predict([photo(20, 20)], fusion="union")


@pytest.mark.parametrize(
    ("predict", "message"),
    [
        ({"global_side": 0, "fusion": "max"}, "fusion"),
        ({"global_side": 16}, "global_side"),
        ({"fusion": "union"}, "fusion"),
    ],
)
def test_inconsistent_fusion_settings_fail_naming_the_key(tmp_path, predict, message):
    with pytest.raises(ConfigError, match=message):
        params_for(tmp_path, **predict)


# --------------------------------------------------------------------------- flip TTA


@pytest.mark.parametrize(("h", "w"), [(48, 64), (150, 232)])  # one tile; tiled (tile sides are multiples of 4)
def test_flip_tta_changes_nothing_for_a_flip_equivariant_model(tmp_path, h, w):
    net = make_model(tmp_path / "m.pt", symmetric=True)
    image = photo(h, w, seed=1)
    # the crafted model really is equivariant: mirroring the input mirrors the output
    np.testing.assert_allclose(reference(net, image[:, ::-1].copy())[:, ::-1], reference(net, image), atol=1e-5)
    single, single_cost = counting_predictor(net, params_for(tmp_path), "tiles")
    tta, tta_cost = counting_predictor(net, params_for(tmp_path, tta_flip=True), "tiles")
    np.testing.assert_allclose(tta.predict([image])[0], single.predict([image])[0], atol=1e-5)
    assert tta_cost.pixels == 2 * single_cost.pixels


def test_flip_tta_is_the_mean_of_the_pass_and_its_mirror(tmp_path):
    net = make_model(tmp_path / "m.pt")
    image = photo(48, 60, seed=1)
    single, single_cost = counting_predictor(net, params_for(tmp_path), "tiles")
    tta, tta_cost = counting_predictor(net, params_for(tmp_path, tta_flip=True), "tiles")
    expected = (reference(net, image) + reference(net, image[:, ::-1].copy())[:, ::-1]) / 2
    got, plain = tta.predict([image])[0], single.predict([image])[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-3)  # this model is not symmetric: TTA really averages
    assert tta_cost.pixels == 2 * single_cost.pixels


# --------------------------------------------------------------------------- calibration in wm evaluate


def crafted_maps(prepared: Path, case: str):
    """A maps function giving, per image, every rule's map from a crafted native and global map.

    case "global": the global view is right and the tiles are noise; "tiles": the reverse;
    "max": tiles see the left half of each mark, the global view the right half, both see clean pixels at 0.6.
    """
    truth = {}
    for split in ("val", "test"):
        for s in load_split(prepared, split):
            truth[np.asarray(Image.open(s.image).convert("RGB")).tobytes()] = np.asarray(Image.open(s.mask)) > 127

    def maps(images):
        out = []
        for im in images:
            t = truth[np.ascontiguousarray(im).tobytes()]
            noise = np.random.default_rng(0).random(t.shape).astype(np.float32)
            good, bad = np.where(t, 0.9, 0.05).astype(np.float32), np.where(t, 0.0, noise).astype(np.float32)
            if case == "max":  # each pass sees half of each mark: only their max separates marks from 0.6 clean
                left = np.zeros_like(t)
                left[:, : t.shape[1] // 2] = True
                halves = [np.where(t & side, 0.9, np.where(t, 0.0, 0.6)).astype(np.float32) for side in (left, ~left)]
                out.append(rule_maps(*halves, refined=dict.fromkeys(REFINE_RULES, noise)))
            else:  # the refine rules get their own (noisy) map, so they never tie with the right rule
                noisy = dict.fromkeys(REFINE_RULES, noise)
                out.append(rule_maps(good, bad, noisy) if case == "tiles" else rule_maps(bad, good, noisy))
        return out

    return maps


class TagAndMetricRecorder(NullLogger):
    """A RunLogger keeping the metrics and tags it is given."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)


@pytest.mark.parametrize("case", ["global", "tiles", "max"])
def test_evaluate_picks_the_better_rule_and_stores_it_in_the_model(tmp_path, monkeypatch, case):
    prepared = make_tiny_prepared(tmp_path / "prepared", n_train=1, n_val=6, n_test=3)
    make_model(tmp_path / "train" / "best.pt")
    # the 96x128 fixture images are all larger; every rule may be chosen
    params = params_for(tmp_path, {"n_overlay": 0, "fusion_rules": list(FUSION_RULES)}, global_side=64)
    maps = crafted_maps(prepared, case)
    monkeypatch.setattr(evaluate_run, "build_rule_maps_fn", lambda *args: maps)
    logged = TagAndMetricRecorder()
    metrics = run_evaluation(params, run_logger=logged)
    fusion = metrics["fusion"]
    assert logged.tags["fusion"] == case and logged.metrics[f"val/fusion_f1_{case}"] == 1.0
    assert fusion["rule"] == case == fusion["applied"]
    assert fusion["n_larger_than_global_side"] == fusion["n_images"] == 6
    assert fusion["val_f1"][case] == 1.0 and all(v < 1.0 for r, v in fusion["val_f1"].items() if r != case)
    meta = load_checkpoint(tmp_path / "evaluate" / "model.pt")["meta"]
    assert meta["fusion"] == case and meta["threshold"] == metrics["val"]["threshold"]
    assert get_predictor(tmp_path / "evaluate" / "model.pt", params).fusion == case  # auto reads it back


def test_evaluate_keeps_refine_when_validation_images_fit_the_global_side(tmp_path, caplog):
    make_tiny_prepared(tmp_path / "prepared", n_train=1, n_val=3, n_test=2)
    make_model(tmp_path / "train" / "best.pt")
    params = params_for(tmp_path, global_side=256, fusion="auto")
    with caplog.at_level("INFO", logger="wmcore.evaluate.calibrate"):
        metrics = run_evaluation(params)
    fusion = metrics["fusion"]
    assert fusion["rule"] == "refine" and fusion["n_larger_than_global_side"] == 0
    assert set(fusion["val_f1"]) == {"global", "refine"}  # evaluate.fusion_rules: the working-scale rules
    assert len(set(fusion["val_f1"].values())) == 1  # one pass: every rule scores the same
    assert "tie" in fusion["reason"] and "tie" in caplog.text


def test_evaluate_with_real_global_views_scores_every_rule_and_applies_a_fixed_one(tmp_path):
    make_tiny_prepared(tmp_path / "prepared", n_train=1, n_val=3, n_test=2)
    make_model(tmp_path / "train" / "best.pt")
    # image_objective balanced_accuracy and no mask gate: the pixel threshold is the plain best val F1
    evaluate = {"n_overlay": 0, "fusion_rules": list(FUSION_RULES), "image_objective": "balanced_accuracy"}
    params = params_for(tmp_path, evaluate, global_side=64, fusion="tiles", gate_masks=False)
    metrics = run_evaluation(params)
    fusion = metrics["fusion"]
    assert set(fusion["val_f1"]) == set(FUSION_RULES) and fusion["applied"] == "tiles"
    assert fusion["rule"] in FUSION_RULES and fusion["n_larger_than_global_side"] == 3
    # the pixel threshold is calibrated on the applied rule's maps: recompute it from the tiled predictions
    predictor = get_predictor(tmp_path / "train" / "best.pt", params)
    assert predictor.fusion == "tiles"
    samples = load_split(tmp_path / "prepared", "val")
    images = [np.asarray(Image.open(s.image).convert("RGB")) for s in samples]
    truths = [np.asarray(Image.open(s.mask)) > 127 for s in samples]
    hist = sum(
        threshold_histograms(torch.from_numpy(p), torch.from_numpy(t), 49)
        for p, t in zip(predictor.predict(images), truths, strict=True)
    )
    threshold, f1 = best_threshold(hist, interior=True)
    assert fusion["val_threshold"]["tiles"] == metrics["val"]["threshold"] == pytest.approx(threshold, abs=1e-6)
    assert fusion["val_f1"]["tiles"] == pytest.approx(f1, abs=1e-6) == metrics["val"]["f1"]


def test_choose_rule_without_watermark_pixels_keeps_the_fallback():
    empty = torch.zeros(2, 5, dtype=torch.long)
    empty[1, 0] = 10
    choice = choose_rule(dict.fromkeys(FUSION_RULES, empty), n_images=2, n_larger=2, global_side=64)
    assert choice.rule == "refine" and "no watermark pixel" in choice.reason
    assert choice.as_metrics()["val_f1"] == dict.fromkeys(FUSION_RULES)


def _hist(tp: int, fn: int, fp: int) -> torch.Tensor:
    """(2, 3) histogram whose only interior threshold (0.5) gives these counts: bins [0, 0.5), [0.5, 1), 1."""
    return torch.tensor([[fn, tp, 0], [1000, fp, 0]], dtype=torch.long)


@pytest.mark.parametrize(("min_gain", "expected"), [(0.0, "tiles"), (0.005, "tiles"), (0.01, "refine")])
def test_choose_rule_needs_a_gain_over_the_fallback_beyond_the_noise_margin(min_gain, expected):
    # F1 at threshold 0.5: refine and max 2*50/(100+50+50) = 0.5; tiles 2*51/(102+49+50) = 0.5075; others lower
    totals = {
        "tiles": _hist(51, 49, 50),
        "global": _hist(40, 60, 50),
        "refine": _hist(50, 50, 50),
        "max": _hist(50, 50, 50),
        "mean": _hist(45, 55, 50),
    }
    choice = choose_rule(totals, n_images=4, n_larger=4, global_side=64, min_gain=min_gain)
    assert choice.f1["max"] == pytest.approx(0.5) and choice.f1["tiles"] == pytest.approx(102 / 201)
    assert choice.rule == expected
