"""Shared pytest fixtures: a tiny prepared dataset (see tests/fixtures.py for its layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import make_tiny_prepared


@pytest.fixture
def tiny_prepared(tmp_path: Path) -> Path:
    """A prepared dataset of 8 train, 4 val, 4 test samples of 96x128 px under tmp_path/prepared."""
    return make_tiny_prepared(tmp_path / "prepared")
