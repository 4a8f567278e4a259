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
