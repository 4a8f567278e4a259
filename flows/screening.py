"""Batch screening of an inbox folder with the champion model.

Only images not yet processed are screened (a processed-manifest that survives
restarts); running it twice processes each image once. Work is claimed in chunks,
so overlapping runs, or chunks spread over Dask workers, never overlap.

The task runner is the flow's choice: local (threads in this process, the default)
or Dask (prefect-dask's DaskTaskRunner), either connecting to a running scheduler
or starting a LocalCluster of worker processes for the run. `run_screening` (and
`wm screen`) picks it from its arguments, else from params.yaml `distributed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect import Flow, flow
from prefect.artifacts import create_table_artifact
from prefect.futures import wait
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings
from prefect.states import Failed, State

from tasks.screening import claim_task, discover_task, screen_chunk_task
from tasks.stages import load_params_task
from wmcore.config import Params, load_params
from wmcore.errors import WmError
from wmcore.runtime.dask_workers import check_scheduler

RUNNERS = ("local", "dask")


@flow(name="wmdetect-screening", flow_run_name="screen-{inbox}", log_prints=True)
def screening(
    inbox: str | None = None,
    out_dir: str | None = None,
    model: str | None = None,
    params_file: str = "params.yaml",
    chunk_size: int | None = None,
    overrides: list[str] | None = None,
) -> dict | State:
    """Screen new images of `inbox` into `out_dir`; returns {"screened", "with_watermark", "rows"}.

    A WmError (an output folder that turned read-only) fails the flow run with its one-line
    message, which calling the flow raises; no traceback is logged.
    """
    params = load_params_task(params_file, overrides or [])
    inbox = inbox or params.paths.inbox
    out_dir = out_dir or params.schedule.screening_out
    try:
        rows = _screen_chunks(params, inbox, out_dir, model or params.schedule.screening_model,
                              chunk_size or params.schedule.screening_chunk)  # fmt: skip
    except WmError as exc:
        return Failed(message=str(exc), data=exc)
    flagged = sum(1 for r in rows if r.get("has_watermark"))
    table = [{k: r.get(k) for k in ("name", "status", "score", "has_watermark", "area_fraction")} for r in rows]
    if table:
        create_table_artifact(table=table, key="screening-results", description=f"{len(rows)} images from {inbox}")
    print(f"screened {len(rows)} new images of {inbox}: {flagged} with watermark -> {out_dir}")
    return {"screened": len(rows), "with_watermark": flagged, "rows": rows}


def _screen_chunks(params: Params, inbox: str, out_dir: str, model: str | None, limit: int) -> list[dict]:
    """Claim chunks of the inbox and screen them as tasks; returns every chunk's rows."""
    items = _value(discover_task(inbox, out_dir))
    futures = []
    try:
        while True:
            chunk = _value(claim_task(out_dir, items, limit))
            if not chunk:
                break
            futures.append(screen_chunk_task.submit(params, out_dir, chunk, model, len(futures)))
            claimed = {c.path for c in chunk}
            items = [i for i in items if i.path not in claimed]
    finally:
        # Every chunk finishes (a failed one releases its claims) before a failure stops the flow:
        # a Dask cluster torn down under running chunks would leave their images claimed.
        wait(futures)
    return [row for fut in futures for row in fut.result()]


def _value(returned: Any) -> Any:
    """A task call's value; a task that returned its Failed state raises the WmError it carries.

    Prefect hands a task's returned state back to a direct (not submitted) call as is, without
    raising: left unchecked, a claim that failed (an output folder that turned read-only) would be
    read as a chunk of images.
    """
    if isinstance(returned, State):
        return returned.result()
    return returned


def dask_task_runner(address: str | None, workers: int) -> Any:
    """A DaskTaskRunner: connect to `address`, else start a LocalCluster of `workers` processes.

    Each worker process runs one chunk at a time (threads_per_worker=1 is Dask's task slots,
    not torch threads: those are sized inside the task, see wmcore.runtime.dask_workers).
    """
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise WmError("runner dask needs prefect-dask: pip install prefect-dask 'dask[distributed]'") from None
    if address:
        return DaskTaskRunner(address=address)
    cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    return DaskTaskRunner(cluster_kwargs=cluster)


def screening_for(
    params: Params, runner: str | None = None, workers: int | None = None, address: str | None = None
) -> Flow:
    """The screening flow with its task runner: the arguments win, else params.distributed.

    A worker count or an address without a runner means dask.
    """
    dist = params.distributed
    given = workers is not None or address is not None
    runner = runner or ("dask" if given else dist.runner)
    if runner not in RUNNERS:
        raise WmError(f"runner {runner!r} unknown; use one of {', '.join(RUNNERS)}")
    if workers is not None and workers < 1:
        raise WmError(f"--workers must be >= 1, got {workers}")
    if runner == "local":
        if given:
            raise WmError("--workers and --dask-address apply to the dask runner only; drop them or use --runner dask")
        return screening
    if workers is not None and address is not None:
        raise WmError(
            f"--workers {workers} starts a LocalCluster, --dask-address {address} uses a running one: pick one"
        )
    return screening.with_options(
        task_runner=dask_task_runner(address or dist.dask_address, workers or dist.dask_workers)
    )


def run_screening(
    inbox: str | None = None,
    out_dir: str | None = None,
    model: str | None = None,
    params_file: str = "params.yaml",
    runner: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    chunk_size: int | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Run one screening with the chosen task runner; returns the flow's {"screened", "with_watermark", "rows"}."""
    params = load_params(params_file, overrides=overrides)
    if chunk_size is not None and chunk_size < 1:
        raise WmError(f"--chunk must be >= 1 image, got {chunk_size}")
    chosen = screening_for(params, runner, workers, address)
    scheduler = getattr(chosen.task_runner, "address", None)
    if scheduler:  # a running cluster: make sure it answers and has workers before the flow starts
        check_scheduler(scheduler, params.distributed.connect_timeout_s)
    shared_api = shared_prefect_api() if chosen is not screening else contextlib.nullcontext()
    with shared_api:
        return chosen(
            inbox=inbox,
            out_dir=out_dir,
            model=model,
            params_file=params_file,
            chunk_size=chunk_size,
            overrides=overrides,
        )


@contextlib.contextmanager
def shared_prefect_api() -> Iterator[None]:
    """Make sure Dask workers report to this process's Prefect API.

    With no PREFECT_API_URL, Prefect starts a temporary server per process: every Dask worker
    would start its own (seconds each) and its task runs would not show under the flow run.
    Starting that temporary server here and naming it in the settings, which the task runner
    ships to the workers with each task, gives all of them the one server.
    """
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield  # a configured server (or none allowed): Prefect's own settings apply
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide temporary server Prefect would start anyway
    server.start()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield
