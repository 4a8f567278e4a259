"""UNet shapes on odd sizes, predict() semantics, safe checkpoint loading."""

from __future__ import annotations

import pickle

import pytest
import torch

from wmcore.errors import WmError
from wmcore.model import UNet, count_flops, count_parameters
from wmcore.model.checkpoint import checkpoint_dict, load_checkpoint, load_model, save_checkpoint


@pytest.mark.parametrize(("h", "w"), [(64, 64), (37, 53), (1, 1), (5, 300), (129, 17)])
@pytest.mark.parametrize("depth", [2, 3])
def test_output_matches_input_size(h, w, depth):
    torch.manual_seed(0)
    model = UNet(base_width=4, depth=depth).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 3, h, w))
    assert out.shape == (2, 1, h, w)
    assert torch.isfinite(out).all()


def test_wrong_channel_count_says_how_to_fix():
    with pytest.raises(ValueError, match="convert images to RGB"):
        UNet(base_width=4, depth=2)(torch.rand(1, 4, 16, 16))


def test_predict_is_probability_and_restores_mode():
    model = UNet(base_width=4, depth=2).train()
    probs = model.predict(torch.rand(1, 3, 20, 20))
    assert probs.min() >= 0 and probs.max() <= 1
    assert model.training and not probs.requires_grad


def test_params_and_flops_scale_with_width():
    small, big = UNet(base_width=4, depth=2), UNet(base_width=8, depth=2)
    assert count_parameters(big) > 3 * count_parameters(small)
    # Conv FLOPs are linear in pixels.
    assert count_flops(small, 64, 64) == 4 * count_flops(small, 32, 32)


def test_checkpoint_roundtrip(tmp_path):
    model = UNet(base_width=4, depth=2)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, checkpoint_dict(model, {"threshold": 0.4}))
    loaded, ckpt = load_model(path)
    assert ckpt["meta"]["threshold"] == 0.4
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded.predict(x), model.eval().predict(x))
    assert not list(tmp_path.glob(".*tmp*"))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_tampered_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_args": {}, "payload": _Evil()}, path)
    with pytest.raises(WmError, match="refused"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", pickle.dumps([1, 2])])
def test_corrupt_checkpoint_is_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(WmError, match="bad.pt"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(WmError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
