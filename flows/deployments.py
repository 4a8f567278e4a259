"""Scheduled deployments: nightly retrain and periodic inbox screening.

One definition (`deployment_specs`, from params.yaml's `schedule` group) feeds both ways to run them:

- `prefect.yaml` (written by `wm serve --write-prefect-yaml`): `prefect deploy --all` registers both
  with the Prefect server named by PREFECT_API_URL, on the process work pool `schedule.work_pool`;
  `prefect worker start --pool wmdetect` runs their flow runs (in the folder `prefect deploy` ran in).
- `wm serve` serves both from this process (`prefect.serve`, no work pool or worker needed);
  `wm serve --register-only` registers them with PREFECT_API_URL and exits.

The screening deployment of prefect.yaml runs on the local task runner; `wm serve` uses the runner
params.yaml `distributed` names (local or Dask).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prefect
import yaml
from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.pipeline import pipeline
from flows.screening import screening_for
from wmcore.config import Params
from wmcore.runtime.atomic import write_text

RETRAIN = "nightly-retrain"
SCREENING = "inbox-screening"
PREFECT_YAML = "prefect.yaml"
ENTRYPOINTS = {RETRAIN: "flows/pipeline.py:pipeline", SCREENING: "flows/screening.py:screening"}
HEADER = """\
# Prefect deployments of wmdetect, written by `wm serve --write-prefect-yaml` from params.yaml (`schedule`):
# change the crons and parameters there, then rewrite this file (tests/test_deployments.py checks they agree).
# Local server (README "Scheduled runs"):
#   prefect server start; export PREFECT_API_URL=http://127.0.0.1:4200/api
#   prefect work-pool create {pool} --type process; prefect deploy --all; prefect worker start --pool {pool}
"""


@dataclass(frozen=True)
class DeploymentSpec:
    """One scheduled deployment: its flow (entrypoint `file.py:function`), cron and flow parameters."""

    name: str
    entrypoint: str
    cron: str
    parameters: dict[str, Any]
    description: str
    tags: list[str] = field(default_factory=list)


def deployment_specs(params: Params, params_file: str = "params.yaml") -> list[DeploymentSpec]:
    """The nightly retrain and the inbox screening, as params.yaml's `schedule` group defines them."""
    s = params.schedule
    retrain = DeploymentSpec(
        RETRAIN, ENTRYPOINTS[RETRAIN], s.retrain_cron, {"params_file": params_file, "profile": "nightly"},
        "Prepare (if changed), train, evaluate and promote the champion if it beats the current one.",
        ["wmdetect", "retrain"],
    )  # fmt: skip
    screening = DeploymentSpec(
        SCREENING, ENTRYPOINTS[SCREENING], s.screening_cron,
        {"inbox": params.paths.inbox, "out_dir": s.screening_out, "model": s.screening_model, "params_file": params_file},
        "Screen new images of the inbox folder with the champion model.", ["wmdetect", "screening"],
    )  # fmt: skip
    return [retrain, screening]


def build_deployments(params: Params, params_file: str = "params.yaml") -> list[RunnerDeployment]:
    """The deployments as Python objects (`wm serve`); the screening one on params.yaml's task runner."""
    flows = {RETRAIN: pipeline, SCREENING: screening_for(params)}
    return [
        flows[spec.name].to_deployment(name=spec.name, cron=spec.cron, parameters=spec.parameters, tags=spec.tags,
                                       description=spec.description)  # fmt: skip
        for spec in deployment_specs(params, params_file)
    ]


def prefect_yaml(params: Params, params_file: str = "params.yaml") -> str:
    """prefect.yaml text of the deployments, on the process work pool `schedule.work_pool`.

    No pull steps: `prefect deploy` then records the folder it runs in, where the worker runs the flows.
    """
    pool = params.schedule.work_pool
    deployments = [
        {"name": spec.name, "description": spec.description, "entrypoint": spec.entrypoint, "tags": spec.tags,
         "parameters": spec.parameters, "schedules": [{"cron": spec.cron}],
         "work_pool": {"name": pool, "work_queue_name": None, "job_variables": {}}}  # fmt: skip
        for spec in deployment_specs(params, params_file)
    ]
    config = {"name": "wmdetect", "prefect-version": prefect.__version__, "build": None, "push": None,
              "pull": None, "deployments": deployments}  # fmt: skip
    return HEADER.format(pool=pool) + yaml.safe_dump(config, sort_keys=False, width=120)


def write_prefect_yaml(params: Params, params_file: str = "params.yaml", path: str | Path = PREFECT_YAML) -> Path:
    """Write `prefect_yaml` to `path` (atomically); returns the path."""
    write_text(Path(path), prefect_yaml(params, params_file))
    return Path(path)


def register_deployments(params: Params, params_file: str = "params.yaml") -> list[str]:
    """Register (create or update) the deployments with the Prefect API; returns their ids."""
    return [str(d.apply()) for d in build_deployments(params, params_file)]


def serve_deployments(params: Params, params_file: str = "params.yaml") -> None:
    """Serve both deployments from this process until interrupted (runs flows on schedule)."""
    serve(*build_deployments(params, params_file))
