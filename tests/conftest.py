"""Shared pytest fixtures: a tiny prepared dataset (see tests/fixtures.py for its layout).

The suite tracks into its own MLflow store: `pytest_configure` points MLFLOW_TRACKING_URI at a
temporary sqlite file before any test runs (the Makefile exports the project's own store, and
params.yaml's default `sqlite:///mlflow.db` is the project's too), so no test, nor any process a
test starts, writes runs into the project's mlflow.db. Tests that need a store of their own set
MLFLOW_TRACKING_URI themselves (monkeypatch), which wins for their duration.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.fixtures import make_tiny_checkpoint, make_tiny_prepared

SUITE_MLFLOW_DIR = Path(tempfile.gettempdir()) / f"wmdetect-tests-mlflow-{os.getpid()}"
SUITE_MLFLOW_URI = f"sqlite:///{SUITE_MLFLOW_DIR / 'mlflow.db'}"


def pytest_configure(config: pytest.Config) -> None:
    SUITE_MLFLOW_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = SUITE_MLFLOW_URI
    os.environ.pop("WMDETECT_PARENT_RUN_ID", None)  # a pipeline run of the shell must not adopt the tests' runs
    # Offline and quiet under a bare `pytest` too (the Makefile exports these for `make test`): the tests'
    # temporary Prefect server otherwise schedules a telemetry heartbeat that fails offline.
    for name, value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "true"),
                        ("MLFLOW_DISABLE_TELEMETRY", "true")):  # fmt: skip
        os.environ.setdefault(name, value)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SUITE_MLFLOW_DIR, ignore_errors=True)


@pytest.fixture
def tiny_prepared(tmp_path: Path) -> Path:
    """A prepared dataset of 8 train, 4 val, 4 test samples of 96x128 px under tmp_path/prepared."""
    return make_tiny_prepared(tmp_path / "prepared")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness for the whole session (its ephemeral server costs seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def fresh_predictor_cache():
    """Each test loads its own model: the per-process predictor cache is emptied before and after."""
    from wmcore.infer.predictor import clear_predictor_cache

    clear_predictor_cache()
    yield
    clear_predictor_cache()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A tiny untrained UNet (base_width 4, depth 2) saved as a safe checkpoint, threshold 0.5."""
    return make_tiny_checkpoint(tmp_path / "model.pt", meta={"threshold": 0.5})
