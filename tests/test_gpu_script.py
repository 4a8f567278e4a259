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
