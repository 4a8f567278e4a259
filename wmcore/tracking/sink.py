"""What a pipeline step needs from a tracker, so steps do not depend on MLflow directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class RunLogger(Protocol):
    """Logging interface of one step's run (MLflow in production, NullLogger when tracking is off)."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...


class NullLogger:
    """Discards everything (tracking disabled, or a non-zero DDP rank)."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass
