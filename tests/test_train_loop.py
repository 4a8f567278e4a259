"""The whole training loop on a tiny dataset: outputs, resume equivalence, skips, stops, switches."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch

import wmcore.train.loop as loop
import wmcore.train.setup as setup
from wmcore.config import Params, merge, validate
from wmcore.data.kept_out import REGISTRIES
from wmcore.errors import WmError
from wmcore.model import UNet
from wmcore.model.checkpoint import checkpoint_dict, save_checkpoint
from wmcore.train.history import METRICS_KEYS
from wmcore.train.loss import SegmentationLoss
from wmcore.train.state import warm_start

EPOCH_KEYS = {
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "val_f1",
    "val_f1_best",
    "val_threshold",
    "val_iou",
    "lr",
    "images_per_s",
    "epoch_images",
    "epoch_step_s",
    "seconds",
    "peak_mem_mb",
    "crop",
    "batch_size",
}


def tiny_params(prepared, tmp_path, name: str = "train", **groups) -> Params:
    """2 epochs, 8 images, micro-batch 2 x 2 accumulation, crop 32 then 48: 2 optimizer steps per epoch."""
    tree = {
        "base": {"seed": 0, "threads": 1, "device": "cpu"},
        "paths": {"prepared": str(prepared), "train_dir": str(tmp_path / name), "cache_dir": str(tmp_path / "cache")},
        "model": {"arch": "unet", "depth": 2, "base_width": 4},
        "train": {
            "epochs": 2,
            "max_minutes": 0,
            "crop": 32,
            "batch_size": 2,
            "grad_accum_steps": 2,
            "log_every": 1,
            "progressive": [
                {"until_epoch": 2, "crop": 32, "batch_size": 2},
                {"until_epoch": 3, "crop": 48, "batch_size": 2},
            ],
            "val_crop": 48,
            "val_batch_size": 2,
            "val_subset": 3,
        },
    }
    return validate(merge(tree, groups))


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_outputs_history_and_checkpoint(tiny_prepared, tmp_path):
    params = tiny_params(tiny_prepared, tmp_path)
    summary = loop.run_training(params)
    out = tmp_path / "train"
    assert {p.name for p in out.iterdir()} == {
        "last.pt",
        "best.pt",
        "history.json",
        "train_summary.json",
        "metrics.json",
        "loss_curve.png",
    }
    assert json.loads((out / "metrics.json").read_text()) == {k: summary[k] for k in METRICS_KEYS}
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert all(set(e) == EPOCH_KEYS for e in history["epochs"])
    assert [(e["crop"], e["batch_size"], e["step"]) for e in history["epochs"]] == [(32, 2, 2), (48, 2, 4)]
    # each epoch's own images (2 steps of 2 x 2 accumulated) and step time; the run's totals are their sums
    assert [e["epoch_images"] for e in history["epochs"]] == [8, 8]
    assert all(0 < e["epoch_step_s"] <= e["seconds"] + 0.01 for e in history["epochs"])
    assert sum(e["epoch_step_s"] for e in history["epochs"]) == pytest.approx(summary["train_step_seconds"], abs=0.01)
    assert [s["step"] for s in history["steps"]] == [1, 2, 3, 4]
    assert all(set(s) == {"step", "loss", "lr", "images_per_s"} for s in history["steps"])
    ckpt = _load(out / "last.pt")
    for key in (
        "model",
        "model_args",
        "meta",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "best_f1",
        "rng",
        "config",
    ):
        assert key in ckpt
    assert (ckpt["epoch"], ckpt["step"]) == (2, 4)
    assert ckpt["config"] == params.model_dump(mode="json")
    assert summary == json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["epochs"] == 2 and summary["stop_reason"] == "epochs"
    best = _load(out / "best.pt")
    assert (
        best["best_f1"]
        == pytest.approx(summary["best_val_f1"])
        == pytest.approx(max(e["val_f1_best"] for e in history["epochs"]))
    )
    assert best["epoch"] == summary["best_epoch"]
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def _stop_after_first_epoch(monkeypatch):
    original = loop.on_epoch_end

    def interrupted(run, epoch, trained, validated):
        original(run, epoch, trained, validated)  # last.pt of epoch 1 is written, then the "crash"
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "on_epoch_end", interrupted)


def test_resume_reaches_the_same_weights(tiny_prepared, tmp_path, monkeypatch):
    straight = loop.run_training(tiny_params(tiny_prepared, tmp_path, "straight"))
    params = tiny_params(tiny_prepared, tmp_path, "resumed")
    with monkeypatch.context() as patch:
        _stop_after_first_epoch(patch)
        with pytest.raises(KeyboardInterrupt):
            loop.run_training(params)
    assert _load(tmp_path / "resumed/last.pt")["epoch"] == 1
    resumed = loop.run_training(params, resume=True)
    a, b = _load(tmp_path / "straight/last.pt"), _load(tmp_path / "resumed/last.pt")
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    volatile = {"seconds", "images_per_s", "epoch_step_s", "peak_mem_mb"}
    rows = [
        [{k: v for k, v in e.items() if k not in volatile} for e in ck["train_state"]["history"]["epochs"]]
        for ck in (a, b)
    ]
    assert rows[0] == rows[1]
    assert (resumed["steps"], resumed["best_val_f1"]) == (straight["steps"], straight["best_val_f1"])


def test_uint8_batches_train_the_same_weights_as_float_batches(tiny_prepared, tmp_path):
    """loader.uint8_batches changes where batches become float (on the device), not what the loop learns."""
    runs = {}
    for uint8 in (False, True):
        name = f"uint8-{uint8}"
        summary = loop.run_training(tiny_params(tiny_prepared, tmp_path, name, loader={"uint8_batches": uint8}))
        runs[uint8] = (summary, _load(tmp_path / name / "last.pt"))
    (plain, a), (small, b) = runs[False], runs[True]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert (plain["steps"], plain["best_val_f1"]) == (small["steps"], small["best_val_f1"]) and plain["steps"] == 4


def test_resume_of_a_finished_run_only_summarises(tiny_prepared, tmp_path):
    params = tiny_params(tiny_prepared, tmp_path, train={"epochs": 1})
    first = loop.run_training(params)
    again = loop.run_training(params, resume=True)
    assert (again["steps"], again["epochs"], again["best_val_f1"]) == (first["steps"], 1, first["best_val_f1"])


def test_resume_without_checkpoint_is_a_clear_error(tiny_prepared, tmp_path):
    with pytest.raises(WmError, match="last.pt: checkpoint not found"):
        loop.run_training(tiny_params(tiny_prepared, tmp_path), resume=True)


def test_resume_with_another_model_is_a_clear_error(tiny_prepared, tmp_path):
    loop.run_training(tiny_params(tiny_prepared, tmp_path, train={"epochs": 1}))
    with pytest.raises(WmError, match="differs from params model group"):
        loop.run_training(tiny_params(tiny_prepared, tmp_path, model={"base_width": 8}), resume=True)


class _NanOnCalls(SegmentationLoss):
    """The real loss, but NaN on the listed call numbers (None = every call)."""

    nan_calls: set[int] | None = None
    calls = 0

    def forward(self, logits, target):
        loss = super().forward(logits, target)
        call, type(self).calls = type(self).calls, type(self).calls + 1
        bad = self.nan_calls is None or call in self.nan_calls
        return loss * math.nan if bad else loss


def test_repeated_non_finite_losses_stop_without_a_checkpoint(tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(_NanOnCalls, "nan_calls", None)
    monkeypatch.setattr(setup, "SegmentationLoss", _NanOnCalls)
    params = tiny_params(tiny_prepared, tmp_path, train={"max_nonfinite_steps": 2})
    with pytest.raises(WmError, match="2 non-finite losses in a row"):
        loop.run_training(params)
    assert not (tmp_path / "train" / "last.pt").exists()
    assert not (tmp_path / "train" / "best.pt").exists()


def test_a_non_finite_step_is_skipped_and_counted(tiny_prepared, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_NanOnCalls, "nan_calls", {0, 1})  # both micro-batches of the first step
    monkeypatch.setattr(_NanOnCalls, "calls", 0)
    monkeypatch.setattr(setup, "SegmentationLoss", _NanOnCalls)
    with caplog.at_level(logging.WARNING):
        summary = loop.run_training(tiny_params(tiny_prepared, tmp_path))
    assert summary["nonfinite_steps"] == 1 and summary["steps"] == 3
    assert "update skipped" in caplog.text
    state = _load(tmp_path / "train" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_naive_switches_everything_off_on_the_same_loop(tiny_prepared, tmp_path):
    summary = loop.run_training(tiny_params(tiny_prepared, tmp_path, train={"naive": True, "compile": True}))
    assert summary["switches"] == {
        "channels_last": False,
        "compile": False,
        "amp": False,
        "amp_dtype": "fp32",
        "grad_accum": 1,
        "progressive": False,
        "multiscale_share": 0.0,
        "cache": "none",
    }
    history = json.loads((tmp_path / "train" / "history.json").read_text())
    # one batch of batch_size x grad_accum_steps images per step, at train.crop: the same steps as optimized
    assert [(e["crop"], e["batch_size"], e["step"]) for e in history["epochs"]] == [(32, 4, 2), (32, 4, 4)]


def test_time_budget_stops_after_a_final_validation(tiny_prepared, tmp_path):
    summary = loop.run_training(tiny_params(tiny_prepared, tmp_path, train={"max_minutes": 1e-6, "epochs": 5}))
    assert summary["stop_reason"] == "time budget"
    assert (summary["epochs"], summary["steps"]) == (1, 1)
    history = json.loads((tmp_path / "train" / "history.json").read_text())
    assert history["epochs"][-1]["val_f1"] is not None
    assert _load(tmp_path / "train" / "last.pt")["epoch"] == 1


def test_early_stop_after_patience_validations_without_gain(tiny_prepared, tmp_path, monkeypatch):
    scores = iter([0.5, 0.4, 0.6, 0.7])
    fixed = {"val_loss": 1.0, "val_f1": 0.1, "val_threshold": 0.5, "val_iou": 0.1, "val_images": 3}
    monkeypatch.setattr(loop, "validation_step", lambda tools, batches: {**fixed, "val_f1_best": next(scores)})
    summary = loop.run_training(tiny_params(tiny_prepared, tmp_path, train={"epochs": 4, "patience": 1}))
    assert summary["stop_reason"] == "early stop"
    assert (summary["epochs"], summary["best_epoch"], summary["best_val_f1"]) == (2, 1, 0.5)


def test_compile_failure_falls_back_to_eager(tiny_prepared, tmp_path, monkeypatch, caplog):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("simulated backend compiler failure")

    monkeypatch.setattr(torch, "compile", lambda model: Broken())
    with caplog.at_level(logging.WARNING):
        summary = loop.run_training(tiny_params(tiny_prepared, tmp_path, train={"compile": True, "epochs": 1}))
    assert summary["steps"] == 2 and summary["switches"]["compile"]
    assert "falling back to eager" in caplog.text


def test_warm_start_loads_matching_weights_and_refuses_others(tmp_path):
    source = UNet(base_width=4, depth=2)
    path = tmp_path / "weights.pt"
    save_checkpoint(path, checkpoint_dict(source))
    target = UNet(base_width=4, depth=2)
    warm_start(path, target)
    assert all(
        torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    )
    with pytest.raises(WmError, match="train.warm_start"):
        warm_start(path, UNet(base_width=8, depth=2))


def test_warm_start_in_the_loop(tiny_prepared, tmp_path):
    loop.run_training(tiny_params(tiny_prepared, tmp_path, "first", train={"epochs": 1}))
    summary = loop.run_training(
        tiny_params(
            tiny_prepared, tmp_path, "second", train={"epochs": 1, "warm_start": str(tmp_path / "first/best.pt")}
        )
    )
    assert summary["steps"] == 2
    with pytest.raises(WmError, match="checkpoint not found"):
        loop.run_training(tiny_params(tiny_prepared, tmp_path, "third", train={"warm_start": str(tmp_path / "x.pt")}))


def _with_heldout(prepared, target, **names):
    """A copy of `prepared` whose stats.json says its train/val/test splits kept `names` out."""
    shutil.copytree(prepared, target)
    plan = {r: [] for r in REGISTRIES} | names
    (target / "stats.json").write_text(json.dumps({"heldout": {"share": 0.2, "samples": 0, **plan}}))
    return target


def test_checkpoints_record_what_the_lineage_never_drew(tiny_prepared, tmp_path, caplog):
    """meta["kept_out"]: the dataset's held-out names, narrowed by each warm start; unknown (None) when a
    start or the dataset does not say. `wm evaluate` checks test_heldout against it."""
    first = _with_heldout(tiny_prepared, tmp_path / "p1", fonts=["a", "b"], styles=["tiled"], photos=["x"])
    second = _with_heldout(tiny_prepared, tmp_path / "p2", fonts=["b", "c"], styles=["tiled", "emboss"])
    loop.run_training(tiny_params(first, tmp_path, "first", train={"epochs": 1}))
    kept = _load(tmp_path / "first/best.pt")["meta"]["kept_out"]
    assert kept == {"fonts": ["a", "b"], "phrase_kinds": [], "styles": ["tiled"], "photos": ["x"], "procedural": []}
    assert _load(tmp_path / "first/last.pt")["meta"]["kept_out"] == kept
    loop.run_training(tiny_params(second, tmp_path, "second",
                                  train={"epochs": 1, "warm_start": str(tmp_path / "first/best.pt")}))
    assert _load(tmp_path / "second/best.pt")["meta"]["kept_out"] == {
        "fonts": ["b"], "phrase_kinds": [], "styles": ["tiled"], "photos": [], "procedural": []}
    save_checkpoint(tmp_path / "unrecorded.pt", checkpoint_dict(UNet(base_width=4, depth=2)))
    with caplog.at_level(logging.WARNING):
        loop.run_training(tiny_params(second, tmp_path, "third",
                                      train={"epochs": 1, "warm_start": str(tmp_path / "unrecorded.pt")}))
        loop.run_training(tiny_params(tiny_prepared, tmp_path, "fourth", train={"epochs": 1}))
    assert _load(tmp_path / "third/best.pt")["meta"]["kept_out"] is None
    assert _load(tmp_path / "fourth/best.pt")["meta"]["kept_out"] is None
    assert "records no kept-out names" in caplog.text and "stats.json" in caplog.text


def test_train_only_trains_the_named_part_and_leaves_the_rest_as_warm_started(tiny_prepared, tmp_path, caplog):
    loop.run_training(tiny_params(tiny_prepared, tmp_path, "first", train={"epochs": 1}))
    start = _load(tmp_path / "first/best.pt")["model"]
    with caplog.at_level(logging.INFO):
        loop.run_training(
            tiny_params(
                tiny_prepared, tmp_path, "second",
                train={"epochs": 1, "warm_start": str(tmp_path / "first/best.pt"), "train_only": ["head"]},
            )
        )
    after = _load(tmp_path / "second/last.pt")["model"]
    changed = {name for name in start if not torch.equal(start[name], after[name])}
    assert changed and all(name.startswith("head") or name.endswith("num_batches_tracked") for name in changed)
    assert "frozen" in caplog.text
    with pytest.raises(WmError, match="train.train_only"):
        loop.run_training(tiny_params(tiny_prepared, tmp_path, "third", train={"train_only": ["nothing"]}))


@pytest.mark.parametrize(("precision", "scaled"), [("bf16", False), ("fp16", True)])
def test_mixed_precision_on_the_same_loop(tiny_prepared, tmp_path, precision, scaled):
    params = tiny_params(tiny_prepared, tmp_path, base={"precision": precision}, train={"amp": True, "epochs": 1})
    summary = loop.run_training(params)
    assert summary["switches"]["amp"] and summary["switches"]["amp_dtype"] == precision
    assert summary["steps"] == 2 and summary["nonfinite_steps"] == 0
    scaler_state = _load(tmp_path / "train" / "last.pt")["scaler"]
    assert bool(scaler_state) == scaled  # fp16 keeps a GradScaler state, bf16 needs none
