"""bench/loop_efficiency.py: the loop's rate per crop stage against the model step at the same shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.loop_efficiency import efficiency, main, stage_rates


def epoch(n: int, crop: int, batch: int, images: int, step_s: float) -> dict:
    return {"epoch": n, "crop": crop, "batch_size": batch, "epoch_images": images, "epoch_step_s": step_s}


HISTORY = [
    epoch(1, 64, 4, 400, 10.0),  # the stage's first epoch: warm-up, left out
    epoch(2, 64, 4, 400, 4.0),
    epoch(3, 64, 4, 400, 4.0),
    epoch(4, 96, 2, 200, 5.0),  # left out
    epoch(5, 96, 2, 200, 4.0),
]
MODEL = [{"crop": 64, "batch": 4, "images_per_s": 125.0}, {"crop": 96, "batch": 2, "images_per_s": 50.0}]


def test_stage_rates_leave_each_stages_first_epoch_out() -> None:
    rates = stage_rates(HISTORY)
    assert [(r["crop"], r["batch"], r["epochs"], r["epochs_used"], r["images"], r["step_s"]) for r in rates] == [
        (64, 4, 3, 2, 800, 8.0),
        (96, 2, 2, 1, 200, 4.0),
    ]
    assert [r["images_per_s"] for r in rates] == [100.0, 50.0]
    one = stage_rates([epoch(1, 32, 8, 80, 2.0)])  # a one-epoch stage is all there is
    assert one[0]["epochs_used"] == 1 and one[0]["images_per_s"] == 40.0


def test_whole_run_ratio_weighs_stages_by_time_not_one_crop() -> None:
    result = efficiency(stage_rates(HISTORY), MODEL)
    assert [r["ratio"] for r in result["stages"]] == [0.8, 1.0]
    # the model step alone: 800 / 125 + 200 / 50 = 10.4 s for what the loop did in 8 + 4 = 12 s
    assert result["ratio"] == pytest.approx(10.4 / 12, abs=1e-3) and result["met"] is False
    # the run-wide images/s over the first stage's model step (1000 / 12 / 125 = 0.67) would understate it
    assert result["ratio"] > (1000 / 12) / 125 + 0.1


def test_a_stage_without_its_model_step_leaves_the_run_figure_out() -> None:
    result = efficiency(stage_rates(HISTORY), MODEL[:1], loader=[{"crop": 96, "batch": 2, "images_per_s": 30.0},
                                                                 {"crop": 96, "batch": 2, "images_per_s": 70.0}])  # fmt: skip
    assert result["stages"][1]["ratio"] is None and result["ratio"] is None and result["met"] is None
    assert result["stages"][1]["loader_images_per_s"] == 70.0  # the fastest loader row of that shape


def test_cli_report_and_clear_error_on_an_older_history(tmp_path: Path, capsys) -> None:
    history, gpu = tmp_path / "history.json", tmp_path / "gpu.json"
    history.write_text(json.dumps({"epochs": HISTORY, "steps": []}))
    gpu.write_text(json.dumps({"recipe": {"stages": MODEL}}))
    assert main(["--history", str(history), "--gpu", str(gpu), "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "loop_efficiency.md").read_text()
    assert "| 64 | 4 | 3 (2) | 100.0 | 125.0 | 0.8 |" in report and "target 0.9 not met" in report
    assert json.loads((tmp_path / "out" / "loop_efficiency.json").read_text())["ratio"] == pytest.approx(0.867)
    old = [{k: v for k, v in row.items() if k != "epoch_step_s"} for row in HISTORY]
    history.write_text(json.dumps({"epochs": old}))
    capsys.readouterr()
    assert main(["--history", str(history), "--gpu", str(gpu)]) == 2
    assert "older code" in capsys.readouterr().err
    gpu.write_text(json.dumps({"recipe": {"error": "RuntimeError: CUDA failed"}}))
    history.write_text(json.dumps({"epochs": HISTORY}))
    assert main(["--history", str(history), "--gpu", str(gpu)]) == 2
    assert "CUDA failed" in capsys.readouterr().err

