"""`wm evaluate` on a tiny prepared folder: files written, metrics in range, known answers for an oracle."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import evaluate_params, make_tiny_prepared, write_random_checkpoint
from wmcore.config import Params
from wmcore.errors import WmError
from wmcore.evaluate import run as evaluate_run
from wmcore.evaluate import score as evaluate_score
from wmcore.evaluate.plots import pick_overlay_rows, plot_training_curves
from wmcore.evaluate.run import run_evaluation
from wmcore.evaluate.samples import load_split
from wmcore.infer.working_scale import FUSION_RULES
from wmcore.model.checkpoint import load_checkpoint

HISTORY = {
    "epochs": [
        {"epoch": 1, "step": 4, "train_loss": 1.2, "val_loss": 1.1, "val_f1": 0.1, "val_iou": 0.05},
        {"epoch": 2, "step": 8, "train_loss": 0.9, "val_loss": None, "val_f1": None, "val_iou": None},
    ],
    "steps": [{"step": 4, "loss": 1.3, "lr": 0.001, "images_per_s": 10.0}],
}


@pytest.fixture
def setup(tmp_path: Path, tiny_prepared: Path) -> Params:
    write_random_checkpoint(tmp_path / "train" / "best.pt")
    return evaluate_params(tmp_path, tiny_prepared)


@pytest.mark.parametrize("with_history", [True, False])
def test_random_model_writes_every_report(setup: Params, with_history: bool) -> None:
    if with_history:
        (Path(setup.paths.train_dir) / "history.json").write_text(json.dumps(HISTORY))
    metrics = run_evaluation(setup)
    out = Path(setup.paths.evaluate_dir)
    written = {p.name for p in out.iterdir()}
    expected = {"metrics.json", "scores.json", "pr_curve.json", "pr_curve.png", "overlays.png", "model.pt"}
    assert written == expected | ({"training_curves.png"} if with_history else set())
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["backend"] == "torch"
    for split, n in (("val", 4), ("test", 4)):
        m = metrics[split]
        assert m["n_images"] == n and m["n_skipped"] == 0 and m["n_clean"] == 1  # every third sample is clean
        for key in (
            "f1",
            "precision",
            "recall",
            "iou",
            "mean_image_f1",
            "mean_image_iou",
            "auroc",
            "ap",
            "clean_fp_area",
        ):
            assert 0.0 <= m[key] <= 1.0, (split, key)
        assert 0.0 < m["threshold"] < 1.0
        assert m["clean_scene_text_fp_area"] is None  # the fixture draws no scene text
    assert metrics["test"]["threshold"] == metrics["val"]["threshold"]  # chosen on val, applied to test
    curve = json.loads((out / "pr_curve.json").read_text())
    assert curve and set(curve[0]) == {"threshold", "precision", "recall"}
    scores = json.loads((out / "scores.json").read_text())
    assert scores["test"]["f1"] == metrics["test"]["f1"] and set(scores) == {"val", "test"}
    for png in written - {"metrics.json", "scores.json", "pr_curve.json", "model.pt"}:
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 100


def test_exported_model_carries_calibrated_thresholds(setup: Params) -> None:
    metrics = run_evaluation(setup)
    ckpt = load_checkpoint(Path(setup.paths.evaluate_dir) / "model.pt")
    assert set(ckpt) == {"model", "model_args", "meta"}
    assert ckpt["model_args"] == {"in_channels": 3, "base_width": 4, "depth": 2}
    meta = ckpt["meta"]
    assert meta["threshold"] == metrics["test"]["threshold"]
    assert meta["image_threshold"] == metrics["test"]["image_threshold"]
    assert meta["test_f1"] == metrics["test"]["f1"]
    assert meta["source_checkpoint"].endswith("best.pt") and meta["source_epoch"] == 2


def _oracle(prepared: Path, low: float, high: float) -> evaluate_score.ProbabilityFn:
    """A 'model' that knows every truth mask: high on watermark pixels, low elsewhere."""
    truth = {}
    for split in ("val", "test"):
        for sample in load_split(prepared, split):
            image = np.asarray(Image.open(sample.image).convert("RGB"))
            truth[hashlib.sha1(image.tobytes()).hexdigest()] = np.asarray(Image.open(sample.mask)) > 127

    def predict(images: list[np.ndarray]) -> list[np.ndarray]:
        masks = [truth[hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest()] for im in images]
        return [np.where(m, high, low).astype(np.float32) for m in masks]

    return predict


def test_oracle_scores_perfectly_with_known_thresholds(setup: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = _oracle(Path(setup.paths.prepared), low=0.05, high=0.95)
    monkeypatch.setattr(evaluate_run, "build_probability_fn", lambda *args: oracle)
    every_rule = lambda images: [dict.fromkeys(FUSION_RULES, p) for p in oracle(images)]  # noqa: E731
    monkeypatch.setattr(evaluate_run, "build_rule_maps_fn", lambda *args: every_rule)
    metrics = run_evaluation(setup)
    test = metrics["test"]
    for key in ("f1", "precision", "recall", "iou", "mean_image_f1", "mean_image_iou", "auroc", "ap"):
        assert test[key] == 1.0, key
    assert test["image_balanced_accuracy"] == 1.0 and test["clean_fp_area"] == 0.0
    # Lowest interior grid value k/48 above 0.05 is 3/48; image scores are 0.05 (clean) and 0.95.
    assert test["threshold"] == pytest.approx(3 / 48, abs=1e-6)
    assert test["image_threshold"] == pytest.approx(0.5)


def test_unreadable_test_image_is_skipped_and_counted(setup: Params) -> None:
    broken = Path(setup.paths.prepared) / "test" / "images" / "test-0001.png"
    broken.write_bytes(b"not a png")
    metrics = run_evaluation(setup)
    assert metrics["test"]["n_skipped"] == 1 and metrics["test"]["n_images"] == 3


def test_crop_evaluates_centre_crops(tmp_path: Path) -> None:
    prepared = make_tiny_prepared(tmp_path / "prepared", n_train=1, n_val=2, n_test=2)
    write_random_checkpoint(tmp_path / "train" / "best.pt")
    params = evaluate_params(tmp_path, prepared, crop=32, n_overlay=0)
    metrics = run_evaluation(params)
    assert metrics["test"]["n_images"] == 2
    assert not (Path(params.paths.evaluate_dir) / "overlays.png").exists()  # n_overlay 0: no grid


@pytest.mark.parametrize(
    ("change", "message"),
    [("no_checkpoint", r"best\.pt: checkpoint not found"), ("no_dataset", r"prepared dataset not found")],
)
def test_missing_inputs_are_clear_errors(tmp_path: Path, change: str, message: str) -> None:
    prepared = tmp_path / "prepared"
    if change == "no_checkpoint":
        make_tiny_prepared(prepared, n_train=1, n_val=1, n_test=1)
    else:
        write_random_checkpoint(tmp_path / "train" / "best.pt")
    with pytest.raises(WmError, match=message):
        run_evaluation(evaluate_params(tmp_path, prepared))


def test_split_without_manifest_is_listed_from_folder(tmp_path: Path) -> None:
    prepared = make_tiny_prepared(tmp_path / "prepared", n_train=1, n_val=2, n_test=3)
    (prepared / "manifest.jsonl").unlink()
    samples = load_split(prepared, "test")
    assert [s.id for s in samples] == ["test-0000", "test-0001", "test-0002"]
    assert all(s.mask.is_file() and s.has_watermark is None for s in samples)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(3, [3, 1, 2]), (10, [3, 1, 2, 4, 0]), (1, [3]), (0, [])],
)
def test_overlay_rows_worst_first(n: int, expected: list[int]) -> None:
    # ranking by F1: 3 (0.0), 1 (0.1), 2 (0.5), 4 (0.7), 0 (0.9)
    assert pick_overlay_rows(np.array([0.9, 0.1, 0.5, 0.0, 0.7]), n) == expected


@pytest.mark.parametrize(
    ("history", "drawn"),
    [
        (HISTORY, True),
        ({"epochs": [], "steps": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]}, True),
        ({}, False),
    ],
    ids=["epochs", "steps-only", "empty"],
)
def test_training_curves_drawn_only_with_data(tmp_path: Path, history: dict, drawn: bool) -> None:
    result = plot_training_curves(history, tmp_path / "curves.png")
    assert (result is not None) == drawn == (tmp_path / "curves.png").exists()


def test_nan_metrics_become_null_in_json(tmp_path: Path) -> None:
    # a test split of only watermarked images: image AUROC is undefined -> null, not NaN
    prepared = make_tiny_prepared(tmp_path / "prepared", n_train=1, n_val=3, n_test=2)
    write_random_checkpoint(tmp_path / "train" / "best.pt")
    metrics = run_evaluation(evaluate_params(tmp_path, prepared))
    assert metrics["test"]["n_clean"] == 0 and metrics["test"]["auroc"] is None
    assert metrics["test"]["clean_fp_area"] is None
    text = (Path(tmp_path / "evaluate") / "metrics.json").read_text()
    assert "NaN" not in text and not any(isinstance(v, float) and math.isnan(v) for v in metrics["test"].values())
