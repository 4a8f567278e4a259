"""`wm bench` / `make bench`: every naive-vs-optimized comparison in one run, judged against the plan and our targets.

Sections (bench/suite_sections.py), all on the same generated data and model:

    dataload     WatermarkDataset + make_loader images/s: cache none/ram/mmap x workers x pin_memory
    train        bench/train.py: naive vs optimized loop, images/s, peak memory, F1 at equal steps
    infer        bench/infer.py: naive vs torch / onnx / onnx-int8, images/s, peak memory, F1 delta
    oom          bench/infer.py's OOM back-off demo under a host memory budget: batches retried, none lost
    overhead     what Prefect, MLflow, DVC and process starts add around the work, vs a default run
    scaling      whole `wm predict` runs vs image count and image side: wall time and peak RSS
    contention   torch threads vs a competing busy process: the collapse, and what auto threads do

Every figure is a ratio to the naive path (or a fraction) with the plan's range (memory -30-50%,
training +20-40%, inference +40-60%, fewer OOM failures) and our target (inference >= 3x,
training >= 1.5x, peak memory <= 0.5x), and a verdict. Writes
`bench/results/<host>-<YYYY-MM-DD>[-quick].json`, `.md` and PNG charts, and logs them to the
MLflow experiment `benchmarks` (skipped with a warning when the store cannot be reached).

`--quick` runs tiny sizes (a smoke check, under 3 minutes on 2 cores); the full run is for a
quiet machine (tens of minutes). Usage (repo root):
    .venv/bin/wm bench --quick
    .venv/bin/python bench/suite.py --sections train infer
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make wmcore and bench importable

RESULTS = ROOT / "bench" / "results"
SCHEMA_VERSION = 1
SECTIONS = ("dataload", "train", "infer", "oom", "overhead", "scaling", "contention")
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
    "training_speedup": 1.5,
    "peak_memory_ratio": 0.5,
    "overhead_fraction": 0.10,
    "memory_growth": 0.10,
    "f1_delta": 0.01,
    "images_kept": 1.0,
    "auto_threads_vs_best": 0.9,
}

log = logging.getLogger("wmdetect.bench")


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
            from wmcore.config import load_params
            from wmcore.data.prepare import run_prepare

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


# --------------------------------------------------------------------------- the run


def machine_info() -> dict[str, Any]:
    import torch

    from wmcore.runtime.device import available_cores, cores_busy_elsewhere

    return {
        "host": socket.gethostname(),
        "cpu": platform.processor() or platform.machine(),
        "cores_visible": os.cpu_count(),
        "cores_free": available_cores(),
        "busy_cores_elsewhere_start": cores_busy_elsewhere(0.5),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_sections(ctx: SuiteContext, names: list[str]) -> dict[str, dict[str, Any]]:
    """Run each section; a failing section is recorded with its error and the others still run."""
    from bench.suite_sections import SECTION_FUNCTIONS
    from wmcore.errors import one_line

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            section = SECTION_FUNCTIONS[name](ctx)
        except Exception as exc:  # one broken section must not lose the others' numbers
            log.exception("section %s failed", name)
            section = {"error": one_line(exc), "figures": []}
        section["seconds"] = round(time.perf_counter() - started, 1)
        out[name] = section
        print(f"[bench] {name}: {section.get('error') or 'done'} in {section['seconds']:.0f} s", flush=True)
    return out


def result_stem(host: str, when: datetime, quick: bool) -> str:
    """`<host>-<YYYY-MM-DD>[-quick]`, the host made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", host) or "host"
    return f"{safe}-{when:%Y-%m-%d}" + ("-quick" if quick else "")


def run_suite(
    params: Any,
    params_path: str | Path = "params.yaml",
    quick: bool = False,
    sections: list[str] | None = None,
    out_dir: str | Path | None = None,
    log_mlflow: bool = True,
) -> dict[str, Any]:
    """Run the chosen sections (default all), write the results, log them to MLflow; returns the result dict.

    result["complete"] is false when a section failed (its error is in result["sections"][name]).
    """
    from wmcore.errors import WmError

    names = list(sections or SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise WmError(f"wm bench: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    started, when = time.perf_counter(), datetime.now()
    work = Path(tempfile.mkdtemp(prefix="wm-bench-suite-"))
    ctx = SuiteContext(params, Path(params_path), quick, work, QUICK if quick else FULL, names)
    try:
        info = machine_info()
        section_results = run_sections(ctx, names)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    figures = [f for s in section_results.values() for f in s.get("figures", [])]
    result = {
        "schema": SCHEMA_VERSION,
        "mode": "quick" if quick else "full",
        "date": when.isoformat(timespec="seconds"),
        "machine": info,
        "plan": PLAN,
        "targets": TARGETS,
        "seconds": round(time.perf_counter() - started, 1),
        "sections": {
            n: {**s, "figures": [asdict(f) for f in s.get("figures", [])]} for n, s in section_results.items()
        },
        "figures": [asdict(f) for f in figures],
        "summary": figures_summary(figures),
        "complete": not any("error" in s for s in section_results.values()),
    }
    from bench.suite_report import log_to_mlflow, write_results

    files = write_results(result, Path(out_dir or RESULTS), result_stem(info["host"], when, quick))
    if log_mlflow:
        result["mlflow_run_id"] = log_to_mlflow(result, files, params)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check in under 3 minutes")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=None, help="run only these sections")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="params file")
    ap.add_argument("--out", default=None, help="results folder (default: bench/results)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log to the MLflow experiment `benchmarks`")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(QUIET_ENV)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.child:
        from bench.suite_sections import run_child_kind

        return run_child_kind(*args.child)
    from wmcore.config import load_params

    result = run_suite(load_params(args.params), args.params, args.quick, args.sections, args.out, not args.no_mlflow)
    return 0 if result["complete"] else 3


if __name__ == "__main__":
    sys.exit(main())
