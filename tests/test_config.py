"""params.yaml validation: good files load, bad keys/values fail naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from wmcore.config import ConfigError, Params, flatten, load_params, parse_override

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
        ({"prepare": {"scene_text_kinds": ["sign", "billboard"]}}, "prepare.scene_text_kinds"),
        ({"prepare": {"scene_text_kinds": []}}, "prepare.scene_text_kinds"),
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


def test_params_yaml_restates_the_code_defaults_or_marks_its_overrides():
    """One home per default: wmcore/config.py. params.yaml restates every default (DVC tracks the key, `dvc exp
    run -S` can set it) or marks the line `# [override]`; a value that differs silently from the code fails here."""
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    defaults = flatten(Params().model_dump(mode="json"))
    marked = set()
    path: list[tuple[int, str]] = []
    for line in text.splitlines():
        m = re.match(r"^( *)([A-Za-z_]\w*):", line)
        if not m:
            continue
        depth = len(m.group(1))
        path = [(d, k) for d, k in path if d < depth] + [(depth, m.group(2))]
        if "# [override]" in line:
            marked.add(".".join(k for _, k in path))
    written = flatten(yaml.safe_load(text))
    unknown = sorted(set(written) - set(defaults))
    assert not unknown, f"params.yaml keys the code does not know: {unknown}"
    missing = sorted(set(defaults) - set(written))
    assert not missing, f"params.yaml lacks these keys (restate the code's default): {missing}"
    silent = {k: (v, defaults[k]) for k, v in written.items() if v != defaults[k] and k not in marked}
    assert not silent, f"params.yaml differs from the code's default (value, default) without `# [override]`: {silent}"
    stale = sorted(k for k in marked if k in written and written[k] == defaults[k])
    assert not stale, f"marked `# [override]` but equal to the code's default (drop the mark): {stale}"


def test_the_tuned_file_is_merged_only_on_request(tmp_path):
    (tmp_path / "params.yaml").write_text("base:\n  seed: 1\n")
    (tmp_path / "params-tuned.yaml").write_text("base:\n  threads: 1\n")
    plain = load_params(tmp_path / "params.yaml")
    assert plain.base.threads == 0 and plain.merged_files == [str(tmp_path / "params.yaml")]
    tuned = load_params(tmp_path / "params.yaml", overrides=["tune.apply=true"])
    assert tuned.base.threads == 1
    assert tuned.merged_files == [str(tmp_path / "params.yaml"), str(tmp_path / "params-tuned.yaml"), "overrides"]
    named = load_params(tmp_path / "params.yaml", extra_files=[tmp_path / "params-tuned.yaml"])
    assert named.base.threads == 1
