"""Fixtures of the reliability suite: a tiny model and a fresh predictor cache per test.

Process helpers (start, kill, environment) are in tests/reliability/wm_process.py, generated
inputs in tests/reliability/generated.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wmcore.infer.predictor import clear_predictor_cache


@pytest.fixture(autouse=True)
def fresh_predictor_cache() -> Iterator[None]:
    """In-process CLI calls must not reuse a predictor (and its model) cached by another test."""
    clear_predictor_cache()
    yield
    clear_predictor_cache()


