"""Scheduled deployments: nightly retrain and periodic inbox screening.

`wm serve` serves both from this process (`prefect.serve`); `wm serve --register-only`
registers them with the Prefect server named by PREFECT_API_URL and exits.
Schedules and their parameters come from params.yaml (`schedule` group).
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.pipeline import pipeline
from flows.screening import screening_for
from wmcore.config import Params

RETRAIN = "nightly-retrain"
SCREENING = "inbox-screening"


def build_deployments(params: Params, params_file: str = "params.yaml") -> list[RunnerDeployment]:
    s = params.schedule
    retrain = pipeline.to_deployment(
        name=RETRAIN,
        cron=s.retrain_cron,
        parameters={"params_file": params_file, "profile": "nightly"},
        tags=["wmdetect", "retrain"],
        description="Prepare (if changed), train, evaluate and promote the champion if it beats the current one.",
    )
    # The screening deployment runs on the task runner params.yaml `distributed` names (local or Dask).
    screen = screening_for(params).to_deployment(
        name=SCREENING,
        cron=s.screening_cron,
        parameters={
            "inbox": params.paths.inbox,
            "out_dir": s.screening_out,
            "model": s.screening_model,
            "params_file": params_file,
        },
        tags=["wmdetect", "screening"],
        description="Screen new images of the inbox folder with the champion model.",
    )
    return [retrain, screen]


def register_deployments(params: Params, params_file: str = "params.yaml") -> list[str]:
    """Register (create or update) the deployments with the Prefect API; returns their ids."""
    return [str(d.apply()) for d in build_deployments(params, params_file)]


def serve_deployments(params: Params, params_file: str = "params.yaml") -> None:
    """Serve both deployments from this process until interrupted (runs flows on schedule)."""
    serve(*build_deployments(params, params_file))
