"""Shared pytest fixtures: a tiny prepared dataset (see tests/fixtures.py for its layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import make_tiny_checkpoint, make_tiny_prepared


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
