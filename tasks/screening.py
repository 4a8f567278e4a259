"""Prefect tasks of the inbox screening: discover, claim a chunk, screen it.

`screen_chunk_task` may run in a Dask worker process: it first sizes that process's
torch threads to its share of the host (wmcore.runtime.dask_workers), then screens.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from wmcore.config import Params
from wmcore.infer.inputs import InputImage
from wmcore.infer.screening import ProcessedManifest, discover_inbox, screen_chunk
from wmcore.runtime.dask_workers import params_for_this_process


@task(name="discover-inbox", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15])
def discover_task(inbox: str, out_dir: str) -> list[InputImage]:
    return discover_inbox(inbox, out_dir)


@task(name="claim-chunk", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15])
def claim_task(out_dir: str, items: list[InputImage], limit: int) -> list[InputImage]:
    return ProcessedManifest(out_dir).claim(items, limit)


@task(name="screen-chunk", task_run_name="screen-{out_dir}-{chunk_id}", cache_policy=NO_CACHE)
def screen_chunk_task(params: Params, out_dir: str, items: list[InputImage], model: str | None, chunk_id: int) -> list:
    return screen_chunk(params_for_this_process(params), out_dir, items, model)
