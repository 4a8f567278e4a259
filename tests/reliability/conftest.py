"""Fixtures of the reliability suite: a tiny model and a fresh predictor cache per test.

Process helpers (start, kill, environment) are in tests/reliability/wm_process.py, generated
inputs in tests/reliability/generated.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import make_tiny_checkpoint
from wmcore.infer.predictor import clear_predictor_cache


@pytest.fixture(autouse=True)
def fresh_predictor_cache() -> Iterator[None]:
    """In-process CLI calls must not reuse a predictor (and its model) cached by another test."""
    clear_predictor_cache()
    yield
    clear_predictor_cache()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A tiny untrained UNet (base_width 4, depth 2) saved as a safe checkpoint."""
    return make_tiny_checkpoint(tmp_path / "model.pt", meta={"threshold": 0.5})
