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
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT_ON_PATH = str(Path(__file__).resolve().parents[1])
if ROOT_ON_PATH not in sys.path:  # run as a script (python bench/suite.py): make wmcore and bench importable
    sys.path.insert(0, ROOT_ON_PATH)

from bench import suite_sections  # noqa: E402  (the path above first)
from bench.suite_context import (  # noqa: E402
    FULL,
    PLAN,
    QUICK,
    QUIET_ENV,
    RESULTS,
    ROOT,
    SCHEMA_VERSION,
    SECTIONS,
    TARGETS,
    SuiteContext,
    figures_summary,
)
from bench.suite_report import log_to_mlflow, write_results  # noqa: E402
from wmcore.config import load_params  # noqa: E402
from wmcore.errors import WmError, one_line  # noqa: E402
from wmcore.runtime import device  # noqa: E402  (via the module: tests stand in a quiet machine)
from wmcore.runtime.machine import machine_info as machine_info_of_host  # noqa: E402

log = logging.getLogger("wmdetect.bench")

# --------------------------------------------------------------------------- the run


def machine_info() -> dict[str, Any]:
    """The machine (wmcore.runtime.machine) and how busy it was at the start."""
    return {**machine_info_of_host(), "busy_cores_elsewhere_start": device.cores_busy_elsewhere(0.5)}


def run_sections(ctx: SuiteContext, names: list[str]) -> dict[str, dict[str, Any]]:
    """Run each section; a failing section is recorded with its error and the others still run."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            section = suite_sections.SECTION_FUNCTIONS[name](ctx)
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
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(QUIET_ENV)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_suite(load_params(args.params), args.params, args.quick, args.sections, args.out, not args.no_mlflow)
    return 0 if result["complete"] else 3


def wm_bench(args: argparse.Namespace) -> int:
    """`wm bench` (the `wmdetect.commands` entry point `bench`): wmcore.cli's parsed arguments -> exit code."""
    result = run_suite(
        load_params(args.params, overrides=args.set, extra_files=args.params_extra),
        args.params,
        quick=args.quick,
        sections=args.sections,
        out_dir=args.out,
        log_mlflow=not args.no_mlflow,
    )
    return 0 if result["complete"] else 3


if __name__ == "__main__":
    sys.exit(main())
