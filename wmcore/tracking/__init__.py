"""Experiment tracking: the RunLogger protocol the steps log through.

The MLflow implementation is `wmcore.tracking.mlflow_run`, imported where needed (mlflow is slow
to import, and steps that only take a RunLogger never need it).
"""

from wmcore.tracking.sink import NullLogger, RunLogger

__all__ = ["NullLogger", "RunLogger"]
