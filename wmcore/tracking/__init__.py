"""Experiment tracking: the RunLogger protocol the steps log through, and its MLflow implementation."""

from wmcore.tracking.sink import NullLogger, RunLogger

__all__ = ["NullLogger", "RunLogger"]
