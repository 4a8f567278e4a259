"""The test suite tracks into its own temporary MLflow store, never the project's mlflow.db (tests/conftest.py).

Both checks run what a careless test would: params.yaml as shipped (tracking.uri sqlite:///mlflow.db,
relative to the project root), from the project root, in this process and in a `wm` subprocess.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from wmcore.config import load_params
from wmcore.tracking.mlflow_run import EXPERIMENT_KIND_TAG, PARENT_RUN_ENV, step_run

ROOT = Path(__file__).resolve().parents[1]
PROJECT_DB = ROOT / "mlflow.db"


def project_run_ids() -> set[str]:
    """Run ids in the project's own store (read-only; empty when it does not exist)."""
    if not PROJECT_DB.is_file():
        return set()
    with sqlite3.connect(f"file:{PROJECT_DB}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT run_uuid FROM runs")}


def test_the_suite_store_is_temporary_and_not_the_projects() -> None:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert uri.startswith("sqlite:///")
    store = Path(uri.removeprefix("sqlite:///"))
    assert not store.resolve().is_relative_to(ROOT) and PARENT_RUN_ENV not in os.environ


def test_a_step_run_from_the_project_root_lands_in_the_suite_store(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)
    params = load_params(ROOT / "params.yaml", overrides={
        "tracking.experiment": "tests-isolation", "tracking.system_metrics": False,
        "paths.evaluate_dir": str(tmp_path / "evaluate"), "paths.cache_dir": str(tmp_path / "cache"),
    })  # fmt: skip
    assert params.tracking.uri == "sqlite:///mlflow.db"  # the project's store, were it not for the suite's env
    mlruns_before = sorted(p.name for p in (ROOT / "mlruns").iterdir()) if (ROOT / "mlruns").is_dir() else []
    with step_run("evaluate", params) as run_logger:
        run_logger.log_metrics({"test/f1": 0.5})
    suite = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = suite.get_run(run_logger.run_id)
    assert run.data.metrics == {"test/f1": 0.5}
    artifacts = Path(suite.get_experiment(run.info.experiment_id).artifact_location)
    assert not artifacts.resolve().is_relative_to(ROOT)
    assert run_logger.run_id not in project_run_ids()
    mlruns_after = sorted(p.name for p in (ROOT / "mlruns").iterdir()) if (ROOT / "mlruns").is_dir() else []
    assert mlruns_after == mlruns_before


def test_a_wm_process_started_by_a_test_inherits_the_suite_store() -> None:
    before = project_run_ids()
    result = subprocess.run([str(Path(sys.executable).parent / "wm"), "ui", "--print-url"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "/#/experiments/" in result.stdout and "/runs?viewStateShareKey=" in result.stdout
    experiment = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_experiment_by_name("wmdetect")
    assert experiment is not None and experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert f"/#/experiments/{experiment.experiment_id}/runs" in result.stdout
    assert project_run_ids() == before
