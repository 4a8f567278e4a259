"""What the sections of `wm bench` share: the plan and our targets, judged figures, sizes, the run's context.

bench/suite.py runs the sections (bench/suite_sections.py, bench/suite_costs.py) and writes the report
(bench/suite_report.py); all four import this module, and none of them imports the run back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmcore.config import load_params
from wmcore.data.prepare import run_prepare

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCHEMA_VERSION = 1
SECTIONS = ("dataload", "train", "infer", "oom", "overhead", "scaling", "contention", "screening")
EXPERIMENT = "benchmarks"
QUIET_ENV = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

# The plan this project comes from, as ratios to the naive path: (low, high) of its promised range.
PLAN = {
    "memory": (0.5, 0.7),  # peak memory -30..-50%
    "training": (1.2, 1.4),  # training throughput +20..40%
    "inference": (1.4, 1.6),  # inference throughput +40..60%
}
PLAN_TEXT = {"memory": "-30..-50%", "training": "+20..40%", "inference": "+40..60%"}
# Our own targets on this CPU.
TARGETS = {
    "inference_speedup": 3.0,
    "screen_vs_naive": 10.0,  # issue 15: default `wm predict` on real 1024x768 photos, whole process
    "screen_vs_ocr": 1.0,  # ... at least the OCR detector's throughput
    "screen_rss_mb": 500.0,
    "training_speedup": 1.5,
    "peak_memory_ratio": 0.5,
    "overhead_fraction": 0.10,
    "memory_growth": 0.10,
    "f1_delta": 0.01,
    "images_kept": 1.0,
    "auto_threads_vs_best": 0.9,
}

# --------------------------------------------------------------------------- figures and verdicts


@dataclass
class Figure:
    """One judged number of the benchmark.

    Attributes:
        section, name: where it comes from and what it is ("train", "throughput optimized / naive").
        value: the number (a ratio to naive, a fraction, seconds, ...); None when it could not be measured.
        unit: "x naive", "fraction", "s", ...
        better: "higher", "lower" or None (information only, no verdict).
        plan: key of PLAN whose range applies, or None.
        target: our target (met when value >= target for "higher", <= for "lower"), or None.
        detail: the raw numbers behind the value, for people.
    """

    section: str
    name: str
    value: float | None
    unit: str = "x naive"
    better: str | None = None
    plan: str | None = None
    target: float | None = None
    detail: str = ""
    plan_verdict: str = field(default="", init=False)
    target_met: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.plan_verdict, self.target_met = judge(self.value, self.better, self.plan, self.target)


def judge(value: float | None, better: str | None, plan: str | None, target: float | None) -> tuple[str, bool | None]:
    """(verdict against the plan's range, target met) of one figure.

    Plan verdicts: "below plan" (worse than its range), "within plan", "beyond plan" (better than
    its range), "" without a plan or value. For memory (lower is better) a ratio of 0.4 is beyond
    the plan's 0.5..0.7; for speed (higher is better) 1.3 is within 1.2..1.4.
    """
    if value is None or better is None:
        return "", None
    verdict = ""
    if plan is not None:
        low, high = PLAN[plan]
        worse, better_than = (value < low, value > high) if better == "higher" else (value > high, value < low)
        verdict = "below plan" if worse else "beyond plan" if better_than else "within plan"
    met = None if target is None else (value >= target if better == "higher" else value <= target)
    return verdict, met


def figures_summary(figures: list[Figure]) -> dict[str, int]:
    """How many figures met their target, missed it, or carry no target."""
    return {
        "met": sum(f.target_met is True for f in figures),
        "missed": sum(f.target_met is False for f in figures),
        "no_target": sum(f.target_met is None for f in figures),
    }


# --------------------------------------------------------------------------- sizes


QUICK = {
    "n_train": 16,
    "n_val": 4,
    "crop": 128,
    "batch": 4,
    "loader_workers": [0, 2],
    "pin": [False],
    "passes": 2,
    "train_args": ["--steps", "3", "--crop", "96", "--micro", "2", "--accum", "2", "--val-images", "2", "--no-compile"],
    "infer_args": ["--images", "4", "--size", "128", "--mem-images", "1", "--mem-size", "640"],
    "screen_args": ["--images", "4", "--variants"],
    "flat_counts": [10, 30],
    "flat_count_size": 128,
    "flat_sizes": ["256x256", "640x640"],
    "oom_images": 4,
    "contention_s": 1.0,
    "contention_side": 128,
    "trained_model": False,
}
FULL = {
    "n_train": 48,
    "n_val": 16,
    "crop": 256,
    "batch": 4,
    "loader_workers": [0, 1, 2],
    "pin": [False, True],
    "passes": 2,
    "train_args": ["--steps", "40", "--crop", "256", "--micro", "2", "--accum", "4", "--val-images", "16"],
    "infer_args": ["--images", "64", "--size", "256", "--mem-images", "2", "--mem-size", "2048"],
    "screen_args": ["--images", "32"],
    "flat_counts": [100, 1000, 5000],
    "flat_count_size": 128,
    "flat_sizes": ["512x512", "1024x1024", "2048x2048", "8000x6000"],  # each run 3 times (median), + whole-decode 8000x6000
    "oom_images": 12,
    "contention_s": 3.0,
    "contention_side": 256,
    "trained_model": True,
}


@dataclass
class SuiteContext:
    """What the sections share: params, sizes, a scratch folder, and the data generated once."""

    params: Any
    params_path: Path
    quick: bool
    work: Path
    sizes: dict[str, Any]
    selected: list[str] = field(default_factory=lambda: list(SECTIONS))
    cache: dict[str, Any] = field(default_factory=dict)

    def prepared(self) -> Path:
        """A small dataset made by `wm prepare` (run_prepare, no held-out split), generated once per run."""
        if "prepared" not in self.cache:
            target = self.work / "prepared"
            counts = {
                "prepare.n_train": self.sizes["n_train"],
                "prepare.n_val": self.sizes["n_val"],
                "prepare.n_test": 1,
                "prepare.n_test_heldout": 0,
                "paths.prepared": str(target),
            }
            run_prepare(load_params(ROOT / "params.yaml", overrides=counts))
            self.cache["prepared"] = target
        return self.cache["prepared"]


