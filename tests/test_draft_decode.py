"""Big JPEGs decoded reduced for their working view: the right size and orientation, full pixels on demand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_infer_fusion import counting_predictor, make_model, params_for
from wmcore.infer.images import DraftedImage, load_for_working_side, load_rgb


def photo_jpeg(path, width: int, height: int, orientation: int = 1):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 127 + 80 * np.sin(xx / 23.0)[..., None] * np.cos(yy / 31.0)[..., None] + rng.normal(0, 10, (height, width, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=92, exif=exif.tobytes())
    return path


@pytest.mark.parametrize(("orientation", "shape"), [(1, (600, 1000, 3)), (6, (1000, 600, 3))])
def test_a_big_jpeg_is_decoded_reduced_with_its_full_upright_shape(tmp_path, orientation, shape):
    path = photo_jpeg(tmp_path / "p.jpg", 1000, 600, orientation)
    drafted = load_for_working_side(path, 200.0, 256)
    assert isinstance(drafted, DraftedImage) and drafted.shape == shape
    assert max(drafted.reduced.shape[:2]) >= 256 and max(drafted.reduced.shape[:2]) < 1000  # DCT scaling took place
    full = load_rgb(path)
    np.testing.assert_array_equal(drafted.rows(100, 50), full[100:150])  # full pixels on demand, upright
    # the reduced view looks like the full image scaled down (libjpeg's scaling vs PIL's resize)
    small = drafted.downscale((shape[0] // 4, shape[1] // 4))
    ref = np.asarray(Image.fromarray(full).resize((shape[1] // 4, shape[0] // 4), Image.Resampling.BILINEAR))
    assert np.abs(small.astype(int) - ref.astype(int)).mean() < 3.0


def test_small_images_and_other_formats_are_decoded_whole(tmp_path):
    small = photo_jpeg(tmp_path / "s.jpg", 400, 300)
    Image.open(small).save(tmp_path / "big.png")
    photo_jpeg(tmp_path / "big.jpg", 1000, 600)
    assert isinstance(load_for_working_side(small, 200.0, 256), np.ndarray)  # < 2x the working side
    assert isinstance(load_for_working_side(tmp_path / "big.png", 200.0, 256), np.ndarray)  # not a JPEG
    assert isinstance(load_for_working_side(tmp_path / "big.jpg", 200.0, 0), np.ndarray)  # off


def test_prediction_of_a_drafted_image_matches_the_whole_decode(tmp_path):
    torch.manual_seed(0)
    net = make_model(tmp_path / "m.pt")
    path = photo_jpeg(tmp_path / "p.jpg", 640, 480)
    params = params_for(tmp_path, global_side=120)
    predictor, cost = counting_predictor(net, params, "global")
    (whole,) = predictor.predict([load_rgb(path)])
    (drafted,) = predictor.predict([load_for_working_side(path, 200.0, 120)])
    assert drafted.shape == whole.shape == (480, 640)
    assert np.abs(drafted - whole).mean() < 0.03  # the same working view up to JPEG DCT scaling
    refined, _ = counting_predictor(net, params_for(tmp_path, global_side=120, refine_threshold=0.01), "refine")
    assert refined.predict([load_for_working_side(path, 200.0, 120)])[0].shape == (480, 640)  # full pixels on demand
