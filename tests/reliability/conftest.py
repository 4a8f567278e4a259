"""Fixtures of the reliability suite: a tiny model and a fresh predictor cache per test.

Process helpers (start, kill, environment) are in tests/reliability/wm_process.py, generated
inputs in tests/reliability/generated.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from wmcore.infer.predictor import clear_predictor_cache
from wmcore.model.checkpoint import save_checkpoint
from wmcore.model.unet import UNet


@pytest.fixture(autouse=True)
def fresh_predictor_cache() -> Iterator[None]:
    """In-process CLI calls must not reuse a predictor (and its model) cached by another test."""
    clear_predictor_cache()
    yield
    clear_predictor_cache()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A tiny untrained UNet (base_width 4, depth 2) saved as a safe checkpoint."""
    torch.manual_seed(0)
    net = UNet(base_width=4, depth=2).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model": net.state_dict(), "model_args": net.model_args(), "meta": {"threshold": 0.5}})
    return path
