"""TextUNet: PP-OCRv4's text detector imported exactly, any input size, no batch statistics, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wmcore.config import OptimizerParams
from wmcore.errors import WmError
from wmcore.model import TextUNet, build_model, model_from_args
from wmcore.model.checkpoint import checkpoint_dict, load_model, save_checkpoint
from wmcore.model.ocr_import import TEXT_DETECTOR, check_against_onnx, import_text_detector, text_detector_onnx
from wmcore.train.setup import freeze_except, param_groups
from wmcore.train.state import warm_start


def page(height: int, width: int) -> np.ndarray:
    """uint8 RGB: dark text lines on a light page beside a photo-like gradient (real text for the detector)."""
    from PIL import ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (235, 232, 225))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=22)
    for i, line in enumerate(["Watermarks are text", "drawn over a photo,", "SAMPLE 2026 (c) wmdetect"]):
        draw.text((12, 10 + 34 * i), line, fill=(20, 20, 30), font=font)
    grad = np.linspace(0, 255, width // 2, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    arr = np.asarray(img).copy()
    arr[:, width // 2 :] = grad[:, : width - width // 2]
    return arr


@pytest.fixture(scope="module")
def detector_onnx(tmp_path_factory):
    # the installed rapidocr-onnxruntime (a dev dependency) holds the pinned file: no download here
    return text_detector_onnx(tmp_path_factory.mktemp("cache"))


def test_imported_encoder_reproduces_the_text_detector_exactly(detector_onnx):
    model = TextUNet()
    counts = import_text_detector(model, detector_onnx)
    assert counts["tensors"] == 234
    image = page(160, 320)
    # Probabilities agree to float32 rounding: 3e-7 with 2 torch threads, 1.5e-5 with 1 (another summation
    # order through ~40 layers with BatchNorm folded); a wrong tensor or layout differs by > 0.1.
    assert check_against_onnx(model, detector_onnx, image) < 1e-4
    with torch.inference_mode():  # and it finds the text: the lines' band is hot, the gradient is not
        text = model.text_probability(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0, 0]
    assert float(text[10:110, 12:150].max()) > 0.9 and float(text[:, 200:].max()) < 0.3


def test_a_different_onnx_file_is_refused_naming_the_tensor(tmp_path):
    from wmcore.infer.onnx_backend import export_onnx
    from wmcore.model.unet import UNet

    export_onnx(UNet(base_width=4, depth=2).eval(), tmp_path / "unet.onnx")
    with pytest.raises(WmError, match="not the PP-OCRv4 det model"):
        import_text_detector(TextUNet(), tmp_path / "unet.onnx")


def test_the_detector_file_is_checked_against_its_pinned_checksum(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "text_detector"
    cache.mkdir(parents=True)
    (cache / "ch_PP-OCRv4_det_infer.onnx").write_bytes(b"not the model")
    wheel = cache / TEXT_DETECTOR["wheel"]
    import zipfile

    with zipfile.ZipFile(wheel, "w") as zf:  # a wheel whose sha256 differs from the pin is not trusted
        zf.writestr(TEXT_DETECTOR["member"], b"tampered")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # as if rapidocr were not installed
    monkeypatch.setitem(TEXT_DETECTOR, "url", (tmp_path / "missing.whl").as_uri())
    with pytest.raises(WmError, match="cannot download"):
        text_detector_onnx(tmp_path / "cache")


@pytest.mark.parametrize(("h", "w"), [(33, 47), (64, 64), (100, 31)])
def test_output_has_the_input_size(h, w):
    torch.manual_seed(0)
    model = TextUNet(width=16).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 3, h, w))
    assert out.shape == (2, 1, h, w) and torch.isfinite(out).all()


def test_no_batch_statistics_an_image_predicts_the_same_alone_or_in_a_batch_even_in_training():
    torch.manual_seed(0)
    model = TextUNet(width=16).train()
    x = torch.rand(4, 3, 64, 96)
    together = model(x)
    alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_gradient_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    model = TextUNet(width=16).train()
    x, y = torch.rand(4, 3, 64, 64), (torch.rand(4, 1, 64, 64) > 0.8).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    loss(model(x), y).backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for i in (0, 2):  # two micro-batches of 2, each loss scaled by 1/2 as the training loop does
        (loss(model(x[i : i + 2]), y[i : i + 2]) / 2).backward()
    for g, p in zip(big, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)


def concatenating_forward(model: TextUNet, x: torch.Tensor) -> torch.Tensor:
    """The decoder as first written: concatenate, upsample, then 1x1 convs (forward computes it in parts)."""
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, (-w) % 32, 0, (-h) % 32), mode="reflect")
    half, feats, det = model.backbone(x.flip(1) * 2.0 - 1.0)
    fpn = model.fpn(det)
    hidden, text_logit = model.db(fpn)
    up = lambda t, ref: torch.nn.functional.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
    q = up(model.dec_quarter(torch.cat([fpn, hidden, feats[0]], dim=1)), half)
    hf = up(torch.relu(model.to_full(model.dec_half(torch.cat([q, half], dim=1)))), x)
    return model.full(torch.cat([hf, x, text_logit], dim=1))[..., :h, :w]


def randomised(model: TextUNet) -> TextUNet:
    """Every parameter moved off its initial value (affines are 1/0 at init: folding them would be a no-op)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_forward_computes_the_concatenating_decoder_exactly():
    torch.manual_seed(0)
    model = randomised(TextUNet(width=16))
    x = torch.rand(2, 3, 70, 90)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), concatenating_forward(model, x), atol=1e-5, rtol=1e-4)


def test_folded_inference_form_gives_the_same_probabilities_with_fewer_parameters():
    torch.manual_seed(1)
    model = randomised(TextUNet(width=16))
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        before = torch.sigmoid(model(x))
        n_before = sum(p.numel() for p in model.parameters())
        folded = model.fold_for_inference()
        after = torch.sigmoid(folded(x))
    assert folded is model and sum(p.numel() for p in model.parameters()) < n_before
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    assert model.fold_for_inference() is model  # folding twice changes nothing more
    with torch.inference_mode():
        torch.testing.assert_close(torch.sigmoid(model(x)), after)


def test_checkpoint_round_trip_rebuilds_the_text_unet(tmp_path):
    torch.manual_seed(0)
    model = build_model(arch="text_unet", width=16).eval()
    assert isinstance(model, TextUNet) and model.model_args() == {"arch": "text_unet", "in_channels": 3, "width": 16}
    save_checkpoint(tmp_path / "m.pt", checkpoint_dict(model))
    loaded, _ = load_model(tmp_path / "m.pt")
    x = torch.rand(1, 3, 40, 56)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    assert model_from_args({"in_channels": 3, "base_width": 4, "depth": 2}).__class__.__name__ == "UNet"


def test_the_pretrained_part_trains_at_its_own_learning_rate():
    model = TextUNet(width=16)
    groups = param_groups(model, OptimizerParams(encoder_lr_scale=0.25))
    scaled = {id(p) for g in groups if g["lr_scale"] == 0.25 for p in g["params"]}
    assert scaled == {id(p) for p in model.encoder_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 0.0 for g in groups for p in g["params"] if p.dim() < 2)


def test_the_edge_head_starts_as_the_model_without_it_and_then_changes_only_the_edges_it_sees(tmp_path):
    torch.manual_seed(0)
    base = randomised(TextUNet(width=16))
    save_checkpoint(tmp_path / "base.pt", checkpoint_dict(base))
    headed = TextUNet(width=16, edge=4).eval()
    assert headed.model_args() == {"arch": "text_unet", "in_channels": 3, "width": 16, "edge": 4}
    fresh, _ = warm_start(tmp_path / "base.pt", headed)
    assert fresh and all(name.startswith("edge.") for name in fresh)
    x = torch.rand(2, 3, 45, 70)
    with torch.inference_mode():
        torch.testing.assert_close(headed(x), base(x), atol=0.0, rtol=0.0)
        with torch.no_grad():
            headed.edge.body[-1].weight.normal_(0.0, 0.5)
        diff = (headed(x) - base(x)).abs()
    assert diff.max() > 1e-3 and diff.shape == (2, 1, 45, 70)
    # The head's window is 5 x 5: one pixel changed at (20, 30) moves its residual nowhere beyond 2 px.
    y = x.clone()
    y[:, :, 20, 30] = 1.0 - y[:, :, 20, 30]
    logits, text = torch.randn(2, 1, 45, 70), torch.randn(2, 1, 45, 70)
    with torch.inference_mode():
        delta = headed.edge(y, logits, text) - headed.edge(x, logits, text)
    far = torch.ones_like(delta, dtype=torch.bool)
    far[..., 18:23, 28:33] = False
    assert delta[far].abs().max() == 0.0 < delta[~far].abs().max()


def test_a_model_with_the_edge_head_does_not_load_into_one_without_it(tmp_path):
    save_checkpoint(tmp_path / "headed.pt", checkpoint_dict(TextUNet(width=16, edge=4)))
    with pytest.raises(WmError, match="train.warm_start.*edge"):
        warm_start(tmp_path / "headed.pt", TextUNet(width=16))
    loaded, _ = load_model(tmp_path / "headed.pt")
    assert loaded.edge is not None and loaded.model_args()["edge"] == 4
    with pytest.raises(ValueError, match="model.edge"):
        build_model(arch="unet", edge=4)


def test_train_only_freezes_everything_else_and_the_optimizer_takes_only_what_trains():
    model = TextUNet(width=16, edge=4)
    trainable, frozen = freeze_except(model, ["edge"])
    assert trainable == sum(p.numel() for p in model.edge.parameters()) and trainable + frozen == sum(
        p.numel() for p in model.parameters()
    )
    groups = param_groups(model, OptimizerParams(encoder_lr_scale=0.25))
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.edge.parameters()}
    with pytest.raises(WmError, match=r"train.train_only: \['head'\].*edge"):
        freeze_except(model, ["head"])
