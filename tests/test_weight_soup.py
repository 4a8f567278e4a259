"""bench/weight_soup.py: the shipped weights are a uniform average of two fine-tuned checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import weight_soup
from tests.fixtures import make_tiny_checkpoint
from wmcore.model.checkpoint import load_checkpoint, load_model


def test_soup_is_the_tensor_mean_and_loads_as_a_model(tmp_path: Path) -> None:
    a = make_tiny_checkpoint(tmp_path / "a" / "best.pt", meta={"val_f1": 0.5}, seed=0)
    b = make_tiny_checkpoint(tmp_path / "b" / "best.pt", seed=1)
    (tmp_path / "b" / "history.json").write_text('{"epochs": []}')
    assert weight_soup.main([str(tmp_path / "soup"), str(a), str(b)]) == 0
    ca, cb, cs = (load_checkpoint(p) for p in (a, b, tmp_path / "soup" / "best.pt"))
    assert set(cs["model"]) == set(ca["model"])
    for key, value in cs["model"].items():
        if value.is_floating_point():
            assert torch.allclose(value, (ca["model"][key] + cb["model"][key]) / 2, atol=1e-6), key
    assert any(not torch.equal(cs["model"][k], ca["model"][k]) for k in ca["model"])  # two seeds: a real mean
    assert cs["meta"]["soup_of"] == [str(a), str(b)] and cs["meta"]["val_f1"] == 0.5
    assert (tmp_path / "soup" / "history.json").read_text() == '{"epochs": []}'  # the last run's, copied
    net, _ = load_model(tmp_path / "soup" / "best.pt")
    assert net(torch.zeros(1, 3, 32, 32)).shape[-2:] == (32, 32)


def test_checkpoints_of_other_architectures_are_refused(tmp_path: Path) -> None:
    a = make_tiny_checkpoint(tmp_path / "a.pt")
    other = load_checkpoint(a)
    other["model"] = dict(list(other["model"].items())[1:])  # one tensor fewer
    torch.save(other, tmp_path / "b.pt")
    with pytest.raises(SystemExit, match="different tensors"):
        weight_soup.soup([str(a), str(tmp_path / "b.pt")])


def test_a_weighted_half_precision_soup_equals_the_uniform_mean_of_the_runs_inside_it(tmp_path: Path) -> None:
    """mean(a, b) shipped as fp16, given @2 beside c, is mean(a, b, c) up to fp16 rounding, stored fp32."""
    a, b, c = (make_tiny_checkpoint(tmp_path / f"{n}.pt", seed=i) for i, n in enumerate("abc"))
    weight_soup.main([str(tmp_path / "ab"), str(a), str(b)])
    ab = load_checkpoint(tmp_path / "ab" / "best.pt")
    ab["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ab["model"].items()}
    torch.save(ab, tmp_path / "ab16.pt")
    weighted = weight_soup.soup([f"{tmp_path / 'ab16.pt'}@2", str(c)])
    uniform = weight_soup.soup([str(a), str(b), str(c)])
    for key, value in uniform["model"].items():
        if value.is_floating_point():
            assert weighted["model"][key].dtype == torch.float32, key
            assert torch.allclose(weighted["model"][key], value, rtol=2e-3, atol=1e-4), key
    unweighted = weight_soup.soup([str(tmp_path / "ab16.pt"), str(c)])  # @2 matters: c weighs 1/2, not 1/3
    assert any(not torch.allclose(unweighted["model"][k], uniform["model"][k], rtol=2e-3, atol=1e-4)
               for k, v in uniform["model"].items() if v.is_floating_point())


@pytest.mark.parametrize("arg", ["x.pt@two", "x.pt@0", "x.pt@-1"])
def test_a_bad_weight_is_a_clear_refusal(arg: str) -> None:
    with pytest.raises(SystemExit, match="weight"):
        weight_soup.parse(arg)
