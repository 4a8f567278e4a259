"""The whole pipeline as one Prefect flow: prepare -> train -> evaluate -> predict, via DVC.

Each stage runs through DVC (`dvc repro <stage>`), so the flow, `dvc repro` and
`make run` all leave the same `dvc.lock`, and an unchanged stage is skipped.
Overrides (`train.epochs=3`, ...) become a DVC experiment (`dvc exp run -S`); `nproc` > 1 is the
override `train.nproc=N`: the train stage's `wm train` then runs as N torchrun (DDP) processes.
One MLflow parent run wraps the steps' nested runs and carries the headline metrics; a run in
which DVC finds every stage up to date (nothing would run) opens none.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from datetime import datetime

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.stages import (
    load_params_task,
    log_summary_task,
    read_results_task,
    run_stage_task,
    stages_changed_task,
)
from wmcore.runtime.report import console_table, markdown_table, summary_rows
from wmcore.tracking.mlflow_run import parent_run

STAGES = ("prepare", "train", "evaluate", "predict")


def _run_name() -> str:
    return f"pipeline-{datetime.now():%Y%m%d-%H%M%S}"


@flow(name="wmdetect-pipeline", flow_run_name="pipeline-{profile}", log_prints=True)
def pipeline(
    overrides: list[str] | None = None,
    params_file: str = "params.yaml",
    root: str = ".",
    profile: str = "default",
    nproc: int = 1,
) -> dict:
    """Run every stage (training as `nproc` DDP processes); returns {"results", "timings", "mlflow_run_id"}."""
    overrides = list(overrides or [])
    if nproc != 1:  # validated with the other params: train.nproc must be >= 1
        overrides.append(f"train.nproc={nproc}")
    params = load_params_task(params_file, overrides)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    to_run = overrides or stages_changed_task(STAGES, root=root)
    with parent_run(params, _run_name()) if to_run else contextlib.nullcontext(None) as run_id:
        if overrides:  # one DVC experiment for the whole pipeline with these parameter values
            res = run_stage_task(STAGES[-1], root=root, overrides=overrides)
            timings["pipeline"] = res.seconds
        else:
            for stage in STAGES:
                res = run_stage_task(stage, root=root)
                timings[stage if res.ran else f"{stage} (unchanged)"] = res.seconds
        results = read_results_task(params, root=root)
        log_summary_task(params, run_id, results, root=root)
    timings["total"] = time.perf_counter() - t_start
    tracked = str(run_id) if run_id else "none (tracking off or unreachable)" if to_run else "none (every stage up to date)"
    rows = summary_rows(results, timings, {"mlflow run": tracked, "outputs": params.paths.evaluate_dir,
                                          "params": " + ".join(params.merged_files) or params_file})
    create_markdown_artifact(markdown=markdown_table(rows, "wmdetect pipeline run"), key="pipeline-summary")
    return {"results": results, "timings": timings, "mlflow_run_id": run_id, "summary_rows": rows}


def run_pipeline_cli(args: argparse.Namespace) -> int:
    """`wm run`: the main job of `make run`."""
    result = pipeline(overrides=args.set, params_file=args.params)
    # Printed here, not in the flow: Prefect routes a flow's prints to its logger, which is quiet.
    print("\n" + console_table(result["summary_rows"]))
    return 0
