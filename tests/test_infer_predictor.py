"""Predictor: model resolution, per-process cache, tiling vs untiled, calibrated thresholds, ONNX backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wmcore.config import load_params
from wmcore.errors import WmError
from wmcore.infer import onnx_backend
from wmcore.infer.predictor import clear_predictor_cache, get_predictor, resolve_model
from wmcore.model.checkpoint import checkpoint_dict, save_checkpoint
from wmcore.model.unet import UNet

pytestmark = pytest.mark.usefixtures("fresh_predictor_cache")


def make_checkpoint(path: Path, meta: dict | None = None, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(base_width=4, depth=2).eval()
    # Random BatchNorm statistics make the tiny net's output depend visibly on its input.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(path, checkpoint_dict(net, meta or {}))
    return net


def params_for(tmp_path: Path, **extra):
    overrides = {
        "paths.cache_dir": str(tmp_path / "cache"),
        "paths.train_dir": str(tmp_path / "train"),
        "paths.evaluate_dir": str(tmp_path / "eval"),
        "paths.prepared": str(tmp_path / "prepared"),
        "predict.tile_size": 64,
        "predict.tile_overlap": 16,
        "base.threads": 1,
        "paths.pretrained": None,
        "predict.enlarge_below": 0,  # the model on the image as given (enlarging: tests/test_infer_enlarge.py)
        **extra,
    }  # fmt: skip  (the shipped model: tests/test_pretrained.py)
    return load_params(overrides=overrides)


def reference(net: UNet, image: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        return torch.sigmoid(net(x))[0, 0].numpy()


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 60 * np.sin(xx / 9.0)[..., None] * np.cos(yy / 13.0)[..., None] + rng.normal(0, 20, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("h", "w"), [(64, 64), (37, 50), (1, 3), (64, 17)])
def test_image_that_fits_one_tile_matches_the_untiled_model(tmp_path, h, w):
    net = make_checkpoint(tmp_path / "m.pt")
    predictor = get_predictor(tmp_path / "m.pt", params_for(tmp_path))
    image = smooth_image(h, w)
    (probs,) = predictor.predict([image])
    assert probs.dtype == np.float32 and probs.shape == (h, w)
    np.testing.assert_allclose(probs, reference(net, image), atol=1e-5)


def test_large_image_tiled_is_close_to_untiled(tmp_path):
    net = make_checkpoint(tmp_path / "m.pt")
    predictor = get_predictor(tmp_path / "m.pt", params_for(tmp_path))
    image = smooth_image(150, 230)
    probs, small = predictor.predict([image, image[:40, :40]])
    full = reference(net, image)
    assert probs.shape == (150, 230) and small.shape == (40, 40)
    assert np.abs(probs - full).mean() < 0.01 and np.abs(probs - full).max() < 0.15
    assert ((probs >= 0.5) == (full >= 0.5)).mean() > 0.98


def test_predict_masks_agrees_with_predict(tmp_path):
    make_checkpoint(tmp_path / "m.pt")
    predictor = get_predictor(tmp_path / "m.pt", params_for(tmp_path, **{"predict.min_region_pixels": 1}))
    image = smooth_image(100, 140)
    (probs,) = predictor.predict([image])
    thr = float(np.median(probs))
    (summary,) = predictor.predict_masks([image], threshold=thr)
    np.testing.assert_array_equal(summary.mask, probs >= thr)
    assert summary.area_fraction == pytest.approx(float((probs >= thr).mean()))
    assert np.abs(summary.prob_u8.astype(int) - np.rint(probs * 255)).max() <= 1


def test_calibrated_thresholds_come_from_checkpoint_meta(tmp_path):
    make_checkpoint(tmp_path / "cal.pt", meta={"threshold": 0.35, "image_threshold": 0.6})
    make_checkpoint(tmp_path / "plain.pt")
    params = params_for(tmp_path, **{"predict.threshold": 0.45})
    cal, plain = get_predictor(tmp_path / "cal.pt", params), get_predictor(tmp_path / "plain.pt", params)
    assert (cal.threshold, cal.image_threshold) == (0.35, 0.6)
    assert (plain.threshold, plain.image_threshold) == (0.45, 0.5)


def test_predictor_is_cached_per_model_and_backend(tmp_path):
    make_checkpoint(tmp_path / "m.pt")
    params = params_for(tmp_path)
    first = get_predictor(tmp_path / "m.pt", params)
    assert get_predictor(str(tmp_path / "m.pt"), params) is first
    assert get_predictor(tmp_path / "m.pt", params_for(tmp_path, **{"predict.tile_size": 128})) is not first
    make_checkpoint(tmp_path / "m.pt", seed=1)  # replaced on disk: new identity, new predictor
    assert get_predictor(tmp_path / "m.pt", params) is not first


def test_default_model_is_evaluation_output_then_training_best(tmp_path):
    params = params_for(tmp_path)
    with pytest.raises(WmError, match="wm train"):
        resolve_model(None, params)
    (tmp_path / "train").mkdir()
    make_checkpoint(tmp_path / "train" / "best.pt")
    assert resolve_model(None, params).path.name == "best.pt"
    (tmp_path / "eval").mkdir()
    make_checkpoint(tmp_path / "eval" / "model.pt")
    assert resolve_model(None, params).path == (tmp_path / "eval" / "model.pt").resolve()
    with pytest.raises(WmError, match="not found"):
        resolve_model(tmp_path / "nope.pt", params)


def test_bad_inputs_are_clear_errors(tmp_path):
    make_checkpoint(tmp_path / "m.pt")
    predictor = get_predictor(tmp_path / "m.pt", params_for(tmp_path))
    with pytest.raises(WmError, match="uint8"):
        predictor.predict([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(WmError, match="uint8"):
        predictor.predict([np.zeros((8, 8), np.uint8)])
    with pytest.raises(WmError, match="backend"):
        get_predictor(tmp_path / "m.pt", predictor.params, backend="tensorrt")


def test_onnx_backend_matches_torch_and_int8_runs(tmp_path):
    make_checkpoint(tmp_path / "m.pt")
    params = params_for(tmp_path, **{"predict.calibration_images": 2})
    images = [smooth_image(64, 64, 1), smooth_image(37, 50, 2), smooth_image(90, 130, 3)]
    torch_out = get_predictor(tmp_path / "m.pt", params, backend="torch").predict(images)
    onnx_out = get_predictor(tmp_path / "m.pt", params, backend="onnx").predict(images)
    for a, b in zip(onnx_out, torch_out, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    calib_dir = tmp_path / "prepared" / "val" / "images"
    calib_dir.mkdir(parents=True)
    from PIL import Image

    for i in range(2):
        Image.fromarray(smooth_image(70, 70, 10 + i)).save(calib_dir / f"{i}.png")
    int8 = get_predictor(tmp_path / "m.pt", params, backend="onnx-int8")
    out = int8.predict(images)
    assert [o.shape for o in out] == [(64, 64), (37, 50), (90, 130)]
    assert all(o.dtype == np.float32 and o.min() >= 0.0 and o.max() <= 1.0 for o in out)
    cached = sorted(p.name.split("-")[1] for p in (tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert cached == ["fp32.onnx", "int8.onnx"]


def test_int8_model_is_built_once_per_model_file_and_rebuilt_when_it_changes(tmp_path, monkeypatch):
    calls = {"export": 0, "quantize": 0}
    real_export, real_quantize = onnx_backend.export_onnx, onnx_backend.quantize_int8

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(onnx_backend, "export_onnx", counted("export", real_export))
    monkeypatch.setattr(onnx_backend, "quantize_int8", counted("quantize", real_quantize))
    params = params_for(tmp_path, **{"predict.calibration_images": 2})
    calibration = tmp_path / "calib.png"
    from PIL import Image

    Image.fromarray(smooth_image(70, 70, 5)).save(calibration)
    images = [smooth_image(64, 64, 1)]

    def int8_run():
        clear_predictor_cache()  # a new process: only the files on disk are left
        return get_predictor(tmp_path / "m.pt", params, backend="onnx-int8", int8_calibration=[calibration]).predict(images)

    make_checkpoint(tmp_path / "m.pt", seed=0)
    first = int8_run()
    assert calls == {"export": 1, "quantize": 1}
    again = int8_run()
    assert calls == {"export": 1, "quantize": 1}  # reused: neither exported nor quantized again
    np.testing.assert_array_equal(first[0], again[0])
    make_checkpoint(tmp_path / "m.pt", seed=1)  # same path, other weights
    changed = int8_run()
    assert calls == {"export": 2, "quantize": 2}
    assert not np.allclose(first[0], changed[0], atol=1e-3)
    assert len(list((tmp_path / "cache" / "onnx").glob("*-int8.onnx"))) == 2  # one per model file content


def test_mlflow_run_uri_downloads_and_loads_the_checkpoint(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    make_checkpoint(tmp_path / "m.pt", meta={"threshold": 0.3})
    mlflow.set_tracking_uri(uri)
    with monkeypatch.context() as here:
        here.chdir(tmp_path)  # the Default experiment keeps its artifacts in ./mlruns: not the project's
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(tmp_path / "m.pt"), artifact_path="model")
    params = params_for(tmp_path, **{"tracking.uri": uri})
    predictor = get_predictor(f"runs:/{run.info.run_id}/model", params)
    assert predictor.threshold == 0.3 and predictor.identity.startswith("runs:/")
    assert predictor.predict([smooth_image(20, 20)])[0].shape == (20, 20)
    with pytest.raises(WmError, match="could not download"):
        get_predictor("models:/no-such-model@champion", params)


def test_int8_of_a_text_unet_comes_with_its_measured_cost():
    from wmcore.model.text_unet import TextUNet

    caveat = onnx_backend.int8_caveat(TextUNet(width=16))
    assert caveat and "onnx-int8" in caveat and "bench/results/int8_quant" in caveat
    assert onnx_backend.int8_caveat(UNet(base_width=4, depth=2)) is None  # int8 measured 3x and F1-neutral there
