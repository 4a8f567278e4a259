"""Batch screening of an inbox folder with the champion model.

Only images not yet processed are screened (a processed-manifest that survives
restarts); running it twice processes each image once. Work is claimed in chunks,
so overlapping runs, or chunks spread over Dask workers, never overlap.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.screening import claim_task, discover_task, screen_chunk_task
from tasks.stages import load_params_task


@flow(name="wmdetect-screening", flow_run_name="screen-{inbox}", log_prints=True)
def screening(
    inbox: str | None = None,
    out_dir: str | None = None,
    model: str | None = None,
    params_file: str = "params.yaml",
    chunk_size: int | None = None,
) -> dict:
    """Screen new images of `inbox` into `out_dir`; returns {"screened", "with_watermark", "rows"}."""
    params = load_params_task(params_file, [])
    inbox = inbox or params.paths.inbox
    out_dir = out_dir or params.schedule.screening_out
    model = model or params.schedule.screening_model
    limit = chunk_size or params.schedule.screening_chunk
    items = discover_task(inbox, out_dir)
    futures = []
    while True:
        chunk = claim_task(out_dir, items, limit)
        if not chunk:
            break
        futures.append(screen_chunk_task.submit(params, out_dir, chunk, model, len(futures)))
        claimed = {c.path for c in chunk}
        items = [i for i in items if i.path not in claimed]
    rows = [row for fut in futures for row in fut.result()]
    flagged = sum(1 for r in rows if r.get("has_watermark"))
    table = [{k: r.get(k) for k in ("name", "status", "score", "has_watermark", "area_fraction")} for r in rows]
    if table:
        create_table_artifact(table=table, key="screening-results", description=f"{len(rows)} images from {inbox}")
    print(f"screened {len(rows)} new images of {inbox}: {flagged} with watermark -> {out_dir}")
    return {"screened": len(rows), "with_watermark": flagged, "rows": rows}
