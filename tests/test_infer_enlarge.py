"""predict.enlarge_below: small images run enlarged, their maps come back at their own size."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.test_infer_fusion import make_model, params_for, photo, reference
from wmcore.evaluate.promote import export_model
from wmcore.infer.enlarge import enlarge_scale, enlarged_shape, resize_image, shrink_map
from wmcore.infer.predictor import get_predictor
from wmcore.infer.tiling import ArrayRows
from wmcore.metrics import image_score
from wmcore.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("fresh_predictor_cache")


@pytest.mark.parametrize(
    ("h", "w", "below", "global_side", "scale"),
    [
        (200, 300, 0, 768, 1.0),  # off
        (400, 500, 400, 768, 1.0),  # short side already there
        (200, 300, 400, 768, 2.0),  # short side brought to 400
        (100, 700, 400, 768, 768 / 700),  # capped: the long side stops at the working side
        (100, 1000, 400, 768, 1.0),  # already past the working side: never shrunk
        (100, 300, 400, 0, 4.0),  # no working side: the short side brought to 400 ...
        (100, 1000, 400, 0, 1.6),  # ... but the long side stays <= 4 x 400
    ],
)
def test_scale_brings_the_short_side_up_never_past_the_working_side(h, w, below, global_side, scale):
    assert enlarge_scale(h, w, below, global_side) == pytest.approx(scale)
    shape = enlarged_shape(h, w, below, global_side)
    assert shape == (None if scale == 1.0 else (round(h * scale), round(w * scale)))


def test_shrink_map_is_the_area_average():
    big = np.zeros((4, 6), np.float32)
    big[:2, :2] = 1.0  # one output pixel of (2, 3) fully on, the rest off
    big[2:, 4:] = 0.5
    assert np.allclose(shrink_map(big, (2, 3)), [[1.0, 0.0, 0.0], [0.0, 0.0, 0.5]], atol=1e-6)


def test_small_image_runs_enlarged_and_its_outputs_come_back_at_its_size(tmp_path):
    net = make_model(tmp_path / "m.pt", meta={"threshold": 0.5, "image_threshold": 0.4})
    image = photo(48, 72, seed=3)  # enlarged to 128 x 192: one tile, no padding, so the whole-image model is exact
    on = get_predictor(str(tmp_path / "m.pt"), params_for(tmp_path, enlarge_below=128, tile_size=256))
    off = get_predictor(str(tmp_path / "m.pt"), params_for(tmp_path, tile_size=256))
    shape = enlarged_shape(48, 72, 128, 256)
    assert shape == (128, 192)
    expected = shrink_map(reference(net, resize_image(image, shape)), (48, 72))

    (probs,) = on.predict([image])
    assert probs.shape == (48, 72) and probs.dtype == np.float32
    assert np.allclose(probs, expected, atol=2e-5)
    assert np.abs(probs - off.predict([image])[0]).mean() > 0.01  # the switch changes what the model sees

    (summary,) = on.predict_masks([image], threshold=0.5)
    assert summary.prob_u8.shape == (48, 72)
    assert np.array_equal(summary.prob_u8, np.rint(expected * 255).astype(np.uint8))
    assert summary.score == pytest.approx(image_score(expected), abs=1e-5)  # scored at the image's own size
    assert summary.gated == (summary.score < 0.4)
    assert np.array_equal(summary.mask, (expected >= 0.5) & (not summary.gated))
    native, working, refined = on.predict_paths([image])[0]
    assert np.allclose(native, expected, atol=2e-5) and working is None and refined is None


def test_images_at_least_the_size_are_untouched_in_a_mixed_batch(tmp_path):
    make_model(tmp_path / "m.pt")
    small, large = photo(48, 80, seed=3), photo(160, 200, seed=4)
    on = get_predictor(str(tmp_path / "m.pt"), params_for(tmp_path, enlarge_below=128))
    off = get_predictor(str(tmp_path / "m.pt"), params_for(tmp_path))
    got = on.predict([large, small, large])
    want = off.predict([large])[0]
    assert np.array_equal(got[0], want) and np.array_equal(got[2], want)
    assert np.allclose(got[1], on.predict([small])[0], atol=1e-6)


class RowsKept:
    """A MaskWriter keeping the rows it is given."""

    def __init__(self) -> None:
        self.prob: list[np.ndarray] = []

    def write_rows(self, prob_u8: np.ndarray, mask: np.ndarray) -> None:
        self.prob.append(prob_u8)


def test_an_image_read_band_by_band_is_enlarged_as_a_whole_one(tmp_path):
    make_model(tmp_path / "m.pt")
    image = photo(48, 72, seed=6)
    predictor = get_predictor(str(tmp_path / "m.pt"), params_for(tmp_path, enlarge_below=128))
    (whole,) = predictor.predict_masks([image])
    writer = RowsKept()
    streamed = predictor.predict_streamed(ArrayRows(image), writer)  # a RowSource, not an array
    assert np.array_equal(np.concatenate(writer.prob), whole.prob_u8)
    assert streamed.score == whole.score and streamed.area_fraction == whole.area_fraction


def test_a_working_side_below_enlarge_below_caps_the_enlargement(tmp_path):
    make_model(tmp_path / "m.pt")
    predictor = get_predictor(str(tmp_path / "m.pt"), params_for(tmp_path, enlarge_below=300, global_side=96))
    assert enlarged_shape(40, 64, 300, 96) == (60, 96)  # the long side stops at the working side
    (probs,) = predictor.predict([photo(40, 64, seed=5)])
    assert probs.shape == (40, 64)


def test_thresholds_record_and_check_the_value_they_were_calibrated_with(tmp_path, caplog):
    make_model(tmp_path / "m.pt")
    metrics = {"test": {"threshold": 0.6, "image_threshold": 0.7, "f1": 0.5, "iou": 0.3, "auroc": 0.9},
               "fusion": {"rule": "refine", "global_side": 256}, "enlarge_below": 128}  # fmt: skip
    export_model(tmp_path / "m.pt", tmp_path / "model.pt", metrics, "torch")
    assert load_checkpoint(tmp_path / "model.pt")["meta"]["enlarge_below"] == 128
    with caplog.at_level(logging.WARNING, logger="wmcore.infer.predictor"):
        get_predictor(str(tmp_path / "model.pt"), params_for(tmp_path, enlarge_below=128))
        assert "enlarge_below" not in caplog.text
        get_predictor(str(tmp_path / "model.pt"), params_for(tmp_path))
    assert "calibrated with predict.enlarge_below=128, running with 0" in caplog.text
    caplog.clear()
    make_model(tmp_path / "best.pt", meta={"threshold": None, "val_f1": 0.5})  # a training checkpoint
    with caplog.at_level(logging.WARNING, logger="wmcore.infer.predictor"):
        get_predictor(str(tmp_path / "best.pt"), params_for(tmp_path, enlarge_below=128))
    assert "enlarge_below" not in caplog.text
