"""Prefect tasks that run the DVC-versioned pipeline stages and read their results."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from wmcore.config import Params, load_params
from wmcore.runtime.report import read_step_results
from wmcore.runtime.versioning import StageResult, repro_stage, stages_changed


@task(name="load-params", cache_policy=NO_CACHE)
def load_params_task(params_file: str, overrides: list[str]) -> Params:
    # Validates before any work starts: a typo in an override fails the flow here.
    return load_params(params_file, overrides=overrides)


@task(name="dvc-status", cache_policy=NO_CACHE)
def stages_changed_task(stages: tuple[str, ...], root: str = ".") -> list[str]:
    return stages_changed(stages, root=root)


@task(name="dvc-stage", task_run_name="stage-{stage}", cache_policy=NO_CACHE)
def run_stage_task(stage: str, root: str = ".", overrides: list[str] | None = None) -> StageResult:
    return repro_stage(stage, root=root, overrides=overrides)


@task(name="read-results", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15])
def read_results_task(params: Params, root: str = ".") -> dict:
    return read_step_results(params, Path(root))


@task(name="log-pipeline-summary", cache_policy=NO_CACHE)
def log_summary_task(params: Params, run_id: str | None, results: dict, root: str = ".") -> None:
    # Deferred: mlflow takes seconds to import, and the screening flow imports this module too.
    from wmcore.tracking.mlflow_run import log_pipeline_summary

    log_pipeline_summary(params, run_id, results, Path(root) / params.paths.prepared)
