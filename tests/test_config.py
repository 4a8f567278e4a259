"""params.yaml validation: good files load, bad keys/values fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wmcore.config import ConfigError, Params, load_params, parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_file_is_valid():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert p.train.optimizer.betas == (0.9, 0.999)


@pytest.mark.parametrize("extra", ["params-gpu.yaml", "params-full.yaml"])
def test_override_sets_are_valid(extra):
    p = load_params(ROOT / "params.yaml", extra_files=[ROOT / extra])
    assert p.model.depth >= 1


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize(
    ("tree", "key_in_message"),
    [
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"optimizer": {"lr": -1}}}, "train.optimizer.lr"),
        ({"train": {"optimizer": {"betas": [0.9, 1.5]}}}, "betas"),
        ({"train": {"epochz": 3}}, "train.epochz"),
        ({"base": {"device": "tpu"}}, "base.device"),
        ({"loader": {"cache": "disk"}}, "loader.cache"),
        ({"predict": {"min_batch_size": 8, "max_batch_size": 2}}, "min_batch_size"),
        ({"predict": {"tile_size": 64, "tile_overlap": 40}}, "tile_overlap"),
        ({"prepare": {"min_side": 900, "max_side": 300}}, "min_side"),
        ({"unknown_group": {}}, "unknown_group"),
        ({"train": {"batch_size": "eight"}}, "train.batch_size"),
    ],
)
def test_bad_values_name_the_key(tmp_path, tree, key_in_message):
    with pytest.raises(ConfigError) as err:
        load_params(_write(tmp_path, tree))
    assert key_in_message in str(err.value)


def test_unknown_key_is_called_a_typo(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_params(_write(tmp_path, {"train": {"lr": 0.1}}))


def test_overrides_apply_in_order_and_validate(tmp_path):
    path = _write(tmp_path, {"train": {"epochs": 3}})
    p = load_params(path, overrides=["train.epochs=7", "train.optimizer.lr=0.01", "base.device=cpu"])
    assert (p.train.epochs, p.train.optimizer.lr, p.base.device) == (7, 0.01, "cpu")
    with pytest.raises(ConfigError, match="train.optimizer.lrr"):
        load_params(path, overrides=["train.optimizer.lrr=0.01"])


@pytest.mark.parametrize("text", ["novalue", "=3"])
def test_malformed_override(text):
    with pytest.raises(ConfigError):
        parse_override(text)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_flat_names_every_leaf():
    flat = Params().flat()
    assert flat["train.optimizer.lr"] == Params().train.optimizer.lr
    assert all(not isinstance(v, dict) for v in flat.values())
