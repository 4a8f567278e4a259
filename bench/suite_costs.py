"""Two sections of `wm bench` that measure costs around the model: pipeline overhead and thread contention.

overhead    What a pipeline run pays besides the work itself, measured piece by piece: a `wm`
            stage process start (imports; DVC runs one per stage), `dvc status` of each stage
            (the hashing `dvc repro` does), the MLflow parent run and step runs (a scratch
            sqlite store), and a Prefect flow of four tasks (the pipeline's shape, its local
            server included). The sum is set against the last `make run` (the MLflow parent
            run's duration), or, without one, train.max_minutes (a run's lower bound).
contention  One conv workload (a UNet forward pass) with 1 and all torch threads, on an idle
            machine and next to a busy Python loop in another process, plus the thread count
            the project's sizing gives when that process is counted (cores minus the cores
            busy elsewhere, as the loop passes its own workers in `reserved`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.suite_context import QUIET_ENV, ROOT, TARGETS, Figure, SuiteContext
from wmcore.model.factory import build_model
from wmcore.runtime import device
from wmcore.tune.workloads import forward_rate, torch_threads

STAGES = ("prepare", "train", "evaluate", "predict")


def timed_command(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> tuple[float, str]:
    """(wall seconds, last stdout line) of `cmd` run in the repo root; RuntimeError naming it on failure."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}): {' | '.join(tail)[:400]}")
    lines = proc.stdout.strip().splitlines()
    return time.perf_counter() - start, lines[-1] if lines else ""


def child_json(kind: str, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "bench" / "suite_children.py"), kind, json.dumps(spec)]
    return json.loads(timed_command(cmd, env)[1])


# --------------------------------------------------------------------------- overhead


def dvc_status_seconds() -> float | None:
    """Seconds of `dvc status <stage>` for every stage in the repo root (None without DVC or dvc.yaml)."""
    dvc = Path(sys.executable).parent / "dvc"
    if not dvc.is_file() or not (ROOT / "dvc.yaml").is_file() or not (ROOT / ".dvc").is_dir():
        return None
    env = {**os.environ, **QUIET_ENV}
    return sum(timed_command([str(dvc), "status", stage], env)[0] for stage in STAGES)


def last_pipeline_seconds(params: Any) -> tuple[float | None, str]:
    """Duration of the last finished pipeline run in MLflow that trained (a run whose stages were all
    unchanged takes seconds and says nothing about a default run), and where it came from."""
    if not params.tracking.enabled:
        return None, "tracking is off"
    from wmcore.tracking.mlflow_run import connect  # deferred: mlflow only here (bench/loader.py runs without it)

    connection = connect(params)
    if isinstance(connection, str):
        return None, connection
    client, experiment_id = connection
    runs = client.search_runs(
        [experiment_id],
        "tags.step = 'pipeline' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        children = f"tags.mlflow.parentRunId = '{run.info.run_id}' and tags.step = 'train'"
        if run.info.end_time and client.search_runs([experiment_id], children, max_results=1):
            seconds = (run.info.end_time - run.info.start_time) / 1000
            return seconds, f"last `make run` that trained: MLflow run {run.info.run_name}"
    return None, "no finished pipeline run with a training step in MLflow"


def prefect_seconds(ctx: SuiteContext, env: dict[str, str]) -> float:
    """The Prefect child's seconds with a Prefect home kept in paths.cache_dir (not the project's own
    .prefect: no benchmark flows in the user's UI). Its first use creates the database, which a
    `make run` does only once, so that start is a warm-up, not the figure."""
    home = Path(ctx.params.paths.cache_dir) / "bench" / "prefect"
    home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last folder of its home
    env = {**env, "PREFECT_HOME": str(home.resolve())}
    spec = {"stages": list(STAGES)}
    if not (home / "prefect.db").is_file():
        child_json("prefect", spec, env)
    return child_json("prefect", spec, env)["prefect_s"]


def overhead(ctx: SuiteContext) -> dict[str, Any]:
    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{ctx.work / 'overhead-mlflow.db'}"}
    start_s, _ = timed_command([sys.executable, "-c", "import torch, wmcore.cli, wmcore.config"], env)
    parts: dict[str, float | None] = {"stage process starts (4)": round(4 * start_s, 2), "dvc status (4 stages)": None}
    parts["dvc status (4 stages)"] = dvc_status_seconds()
    parts["mlflow runs (parent + train, evaluate)"] = child_json(
        "mlflow", {"steps": ["train", "evaluate"], "fallback": str(ctx.work / "mlflow-fallback")}, env
    )["mlflow_s"]
    parts["prefect flow (4 tasks, local server)"] = prefect_seconds(ctx, env)
    total = sum(v for v in parts.values() if v is not None)
    run_s, source = last_pipeline_seconds(ctx.params)
    if run_s is None:
        run_s, source = ctx.params.train.max_minutes * 60 or None, f"train.max_minutes ({source})"
    fraction = round(total / run_s, 4) if run_s else None
    rows = [{"part": k, "seconds": v} for k, v in parts.items()] + [{"part": "a default run", "seconds": run_s}]
    figures = [
        Figure(
            "overhead",
            "pipeline overhead / default run",
            fraction,
            unit="fraction",
            better="lower",
            target=TARGETS["overhead_fraction"],
            detail=f"{total:.1f} s of {run_s} s ({source})",
        )
    ]
    notes = ["Each part measured on its own (see bench/suite_costs.py); a part listed as None was not available."]
    return {"rows": rows, "figures": figures, "notes": notes}


# --------------------------------------------------------------------------- contention


def start_competitor() -> subprocess.Popen:
    """A busy Python loop in another process: it keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def conv_rate(model: Any, side: int, threads: int, seconds: float) -> float:
    with torch_threads(threads):
        return forward_rate(model, side, seconds)


def contention_rows(model: Any, side: int, seconds: float, cores: int) -> list[dict[str, Any]]:
    """images/s for 1 and all threads, idle and with a competitor, plus the counted-competitor thread count."""

    rows = [
        {"threads": k, "competitor": False, "images_per_s": conv_rate(model, side, k, seconds)}
        for k in sorted({1, cores})
    ]
    competitor = start_competitor()
    try:
        time.sleep(0.5)  # let it reach full speed
        busy = device.cores_busy_elsewhere(0.5)
        auto = device.thread_count(0, round(busy), cores)
        for k in sorted({1, cores}):
            rows.append({"threads": k, "competitor": True, "images_per_s": conv_rate(model, side, k, seconds)})
        # auto picks one of the thread counts just measured: its speed is that row's (a rerun adds only noise)
        same = next((r for r in rows if r["competitor"] and r["threads"] == auto), None)
        ips = same["images_per_s"] if same else conv_rate(model, side, auto, seconds)
        rows.append(
            {
                "threads": auto,
                "competitor": True,
                "label": "auto, competitor counted",
                "busy_cores_elsewhere": busy,
                "images_per_s": ips,
            }
        )
    finally:
        competitor.kill()
        competitor.wait()
    return rows


def contention(ctx: SuiteContext) -> dict[str, Any]:
    cores = device.available_cores()
    if cores < 2:
        return {"rows": [], "figures": [], "notes": ["one usable core: no thread contention to show"]}
    model = build_model(**ctx.params.model.model_dump()).eval()
    rows = contention_rows(model, ctx.sizes["contention_side"], ctx.sizes["contention_s"], cores)
    ips = {(r["threads"], r["competitor"], "label" in r): r["images_per_s"] for r in rows}
    all_idle, all_busy = ips[(cores, False, False)], ips[(cores, True, False)]
    best_busy = max(ips[(1, True, False)], all_busy)
    auto_row = rows[-1]
    figures = [
        Figure(
            "contention",
            f"{cores} threads next to a busy process / idle",
            round(all_busy / all_idle, 3),
            unit="x idle",
            detail=f"{all_idle} -> {all_busy} img/s (the collapse)",
        ),
        Figure(
            "contention",
            "auto threads (competitor counted) / best fixed, busy",
            round(auto_row["images_per_s"] / best_busy, 3),
            unit="x best",
            better="higher",
            target=TARGETS["auto_threads_vs_best"],
            detail=f"{auto_row['threads']} thread(s): {auto_row['images_per_s']} vs best {best_busy} img/s",
        ),
    ]
    notes = [
        f"UNet forward passes at {ctx.sizes['contention_side']} px, {ctx.sizes['contention_s']} s each. "
        "base.threads = 0 sizes threads to affinity and cgroup quota minus the job's own workers "
        "(`reserved`); a process outside the job is counted only when it is measured, as here."
    ]
    return {"rows": rows, "figures": figures, "notes": notes}
