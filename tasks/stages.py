"""Prefect tasks that run the DVC-versioned pipeline stages and read their results."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from wmcore.config import Params, load_params
from wmcore.runtime.report import read_step_results
from wmcore.runtime.versioning import StageResult, repro_stage


@task(name="load-params", cache_policy=NO_CACHE)
def load_params_task(params_file: str, overrides: list[str]) -> Params:
    # Validates before any work starts: a typo in an override fails the flow here.
    return load_params(params_file, overrides=overrides)


@task(name="dvc-stage", task_run_name="stage-{stage}", cache_policy=NO_CACHE)
def run_stage_task(stage: str, root: str = ".", overrides: list[str] | None = None) -> StageResult:
    return repro_stage(stage, root=root, overrides=overrides)


@task(name="read-results", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15])
def read_results_task(params: Params, root: str = ".") -> dict:
    return read_step_results(params, Path(root))
