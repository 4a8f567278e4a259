"""What both tracking paths (inline `mlflow_run`, `deferred`) share, without importing MLflow (seconds to import)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from wmcore.config import Params

PARENT_RUN_ENV = "WMDETECT_PARENT_RUN_ID"  # the pipeline's parent run, nesting step runs (mlflow_run.parent_run)
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def tracking_uri(params: Params) -> str:
    """The tracking URI: env MLFLOW_TRACKING_URI wins, else tracking.uri."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


def absolute_uri(uri: str) -> str:
    """`uri` with a relative sqlite path made absolute (against the working directory), others unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri.removeprefix(prefix)).is_absolute():
        return prefix + str(Path(uri.removeprefix(prefix)).absolute())
    return uri


def git_tags(cwd: str | Path = ".") -> dict[str, str]:
    """{"git_commit", "git_dirty"} of the working tree at `cwd`; {} outside git or without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0:
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": str(bool(status.stdout.strip())).lower()}


@contextlib.contextmanager
def ended_with_status(end: Callable[[str], None]) -> Iterator[None]:
    """Run the block, then call `end` with FINISHED, KILLED (Ctrl-C) or FAILED; exceptions propagate."""
    status = "FINISHED"
    try:
        yield
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        end(status)
