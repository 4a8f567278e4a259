"""The shipped pretrained weights (models/wmdetect.pt) and the export that writes such files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures import make_tiny_checkpoint
from wmcore.config import load_params
from wmcore.hashing import file_sha256
from wmcore.infer.predictor import resolve_model
from wmcore.model.checkpoint import load_checkpoint, load_model
from wmcore.pretrained import (
    check_metrics,
    export_weights,
    prepare_check_set,
    provenance_path,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "wmdetect.pt"


@pytest.fixture(scope="module")
def provenance() -> dict:
    return json.loads(provenance_path(SHIPPED).read_text())


def test_shipped_weights_load_safely_and_match_their_provenance(provenance: dict) -> None:
    ckpt = load_checkpoint(SHIPPED)  # weights_only + CRC check
    assert file_sha256(SHIPPED) == provenance["weights_sha256"]
    assert SHIPPED.stat().st_size == provenance["weights_bytes"] <= 30 * 2**20
    assert ckpt["model_args"] == provenance["model_args"]
    floats = [t for t in ckpt["model"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    meta = ckpt["meta"]
    assert 0.0 < meta["threshold"] < 1.0 and 0.0 < meta["image_threshold"] < 1.0
    assert meta["fusion"] in ("tiles", "global", "max", "mean", "refine")
    for key in ("command", "prepared", "training", "metrics", "params"):
        assert provenance[key], key
    assert provenance["metrics"]["test"]["f1"] == pytest.approx(meta["test_f1"])


@pytest.mark.usefixtures("fresh_predictor_cache")
def test_shipped_weights_reproduce_their_recorded_check_set_metrics(tmp_path: Path, provenance: dict) -> None:
    params = load_params(ROOT / "params.yaml", overrides={"paths.cache_dir": str(tmp_path / "cache")})
    measured = check_metrics(SHIPPED, prepare_check_set(params, tmp_path / "check"), params)
    recorded = provenance["check_set"]
    assert measured["n_images"] == recorded["n_images"]
    for key in ("f1", "iou", "mean_image_score"):
        assert measured[key] == pytest.approx(recorded[key], abs=0.02), key
    assert measured["f1"] > 0.3  # a broken load (e.g. zeroed weights) scores ~0 here


@pytest.mark.usefixtures("fresh_predictor_cache")
@pytest.mark.parametrize("half", [True, False])
def test_export_writes_loadable_weights_with_meta_and_provenance(tmp_path: Path, half: bool) -> None:
    source = make_tiny_checkpoint(tmp_path / "model.pt", meta={"threshold": 0.4, "fusion": "max"})
    out = tmp_path / "ship" / "w.pt"
    record = export_weights(source, out, {"command": "test"}, half=half)
    assert json.loads(provenance_path(out).read_text()) == json.loads(json.dumps(record, default=str))
    assert record["weights_sha256"] == file_sha256(out) and record["precision"] == ("fp16" if half else "fp32")
    shipped, ckpt = load_model(out)
    original, _ = load_model(source)
    assert ckpt["meta"] == {"threshold": 0.4, "fusion": "max"}
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        diff = (torch.sigmoid(shipped(x)) - torch.sigmoid(original(x))).abs().max().item()
    assert diff < (5e-3 if half else 1e-6)
    assert next(shipped.parameters()).dtype == torch.float32  # fp16 file, fp32 model


def test_default_model_prefers_evaluated_then_shipped_then_last_training(tmp_path: Path) -> None:
    evaluated, shipped, trained = (
        tmp_path / "eval" / "model.pt",
        tmp_path / "models" / "w.pt",
        tmp_path / "tr" / "best.pt",
    )
    params = load_params(
        ROOT / "params.yaml",
        overrides={"paths.evaluate_dir": str(evaluated.parent), "paths.pretrained": str(shipped),
                   "paths.train_dir": str(trained.parent)},
    )  # fmt: skip
    for path in (trained, shipped, evaluated):
        path.parent.mkdir(parents=True)
        make_tiny_checkpoint(path)
        assert resolve_model(None, params).path == path.resolve()
    evaluated.unlink()
    assert resolve_model(None, params).path == shipped.resolve()


def test_check_set_is_generated_deterministically(tmp_path: Path) -> None:
    params = load_params(ROOT / "params.yaml")
    a, b = prepare_check_set(params, tmp_path / "a"), prepare_check_set(params, tmp_path / "b")
    files_a = sorted(p.relative_to(a) for p in (a / "test" / "images").iterdir())
    assert files_a == sorted(p.relative_to(b) for p in (b / "test" / "images").iterdir()) and len(files_a) == 8
    for rel in files_a:
        assert np.array_equal(np.asarray(_open(a / rel)), np.asarray(_open(b / rel)))


def _open(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
