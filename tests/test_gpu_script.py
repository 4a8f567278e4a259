"""bench/gpu.sh and bench/gpu.py: the prepared CUDA script is valid and its CPU smoke path works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_shell_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_bench_quick_sections_keep_every_image_and_write_a_report(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--quick", "--out", str(out), "--work", str(tmp_path / "w"),
           "--sections", "adaptive", "oom"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["adaptive"]["outputs"] == results["adaptive"]["images"] > 0
    assert results["oom"]["lost"] == 0 and results["oom"]["max_abs_diff_vs_batch1"] < 1e-4
    report = out.with_suffix(".md").read_text()
    assert "## adaptive" in report and "## oom" in report


def test_recipe_section_times_the_training_runs_own_stages(tmp_path: Path) -> None:
    """bench/gpu.py recipe: the model step of the run's params files and overrides, at each progressive stage."""
    out = tmp_path / "gpu.json"
    stages = "[{until_epoch: 2, crop: 32, batch_size: 2}, {until_epoch: 9, crop: 48, batch_size: 1}]"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--quick", "--out", str(out), "--sections", "recipe",
           "--recipe", "params-full.yaml", "params-gpu.yaml", "bench/ship-gpu.yaml",
           "--set", "base.precision=fp32", "train.amp=false", f"train.progressive={stages}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    recipe = json.loads(out.read_text())["recipe"]
    assert recipe["recipe"] == ["params-full.yaml", "params-gpu.yaml", "bench/ship-gpu.yaml"]
    # ship-gpu.yaml's accumulation (params-full.yaml's 2 beneath it), the overrides' precision and stages
    assert (recipe["arch"], recipe["precision"], recipe["grad_accum"]) == ("text_unet", "fp32", 1)
    assert [(s["crop"], s["batch"]) for s in recipe["stages"]] == [(32, 2), (48, 1)]
    assert all(s["images_per_s"] > 0 and s["step_ms"] > 0 for s in recipe["stages"])
    assert "| 48 | 1 |" in out.with_suffix(".md").read_text()
