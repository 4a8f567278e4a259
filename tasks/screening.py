"""Prefect tasks of the inbox screening: discover, claim a chunk, screen it.

`screen_chunk_task` may run in a Dask worker process: it first sizes that process's
torch threads to its share of the host (wmcore.runtime.dask_workers), then screens.
An error the user must fix (a WmError, e.g. an output folder that turned read-only)
fails the task with its one-line message and is not retried: raised out of the task
function, Prefect would log its traceback.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from wmcore.config import Params
from wmcore.errors import WmError
from wmcore.infer.inputs import InputImage
from wmcore.infer.screening import ProcessedManifest, discover_inbox, screen_chunk
from wmcore.runtime.dask_workers import params_for_this_process


def retry_unless_user_error(task: Any, task_run: Any, state: State) -> bool:
    """Prefect retry condition: retry I/O hiccups, not a WmError (retrying cannot fix it)."""
    try:
        state.result()
    except WmError:
        return False
    except Exception:
        return True
    return True


def _failed(exc: WmError) -> State:
    """The task's Failed state carrying `exc`: `.result()` raises it, nothing logs a traceback."""
    return Failed(message=str(exc), data=exc)


@task(name="discover-inbox", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_unless_user_error)  # fmt: skip
def discover_task(inbox: str, out_dir: str) -> list[InputImage] | State:
    try:
        return discover_inbox(inbox, out_dir)
    except WmError as exc:
        return _failed(exc)


@task(name="claim-chunk", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_unless_user_error)  # fmt: skip
def claim_task(out_dir: str, items: list[InputImage], limit: int) -> list[InputImage] | State:
    try:
        return ProcessedManifest(out_dir).claim(items, limit)
    except WmError as exc:
        return _failed(exc)


@task(name="screen-chunk", task_run_name="screen-{out_dir}-{chunk_id}", cache_policy=NO_CACHE)
def screen_chunk_task(
    params: Params, out_dir: str, items: list[InputImage], model: str | None, chunk_id: int
) -> list | State:
    try:
        return screen_chunk(params_for_this_process(params), out_dir, items, model)
    except WmError as exc:
        return _failed(exc)
