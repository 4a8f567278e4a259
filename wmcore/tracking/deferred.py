"""Deferred MLflow runs: a short step records its run locally and a background process sends it.

Importing MLflow and opening its sqlite store costs a `wm predict` process ~2-3 s on the 2-core CPU,
more than screening 32 photos takes. With `tracking.defer_predict` the step's run is collected in
memory (`DeferredRunLogger`), written when the step ends as one record folder in the spool
(`<paths.cache_dir>/tracking-spool/<record id>/`: record.json and copies of the run's artifacts;
written under a temporary name and renamed, so a record is whole or absent), and a detached child
at the lowest CPU priority (`python -m wmcore.tracking.deferred SPOOL`) sends every record to
MLflow, then deletes it. The run keeps its name, step tag, git tags, parameters, metrics, artifacts,
status and start/end times; MLflow's own system-metrics sampler does not run for it.

- One sender at a time (an exclusive lock on `SPOOL/.send.lock`); a record that arrives while it
  works is sent in the same pass or by the next step's sender.
- A record whose store cannot be reached stays in the spool (one warning in `SPOOL/send.log`) and
  goes with the next sender; nothing is lost when the store is down.
- Sending is idempotent: each run is tagged with its record id (`wm_record_id`) and marked
  complete (`wm_record_complete`) last; a sender that finds a complete run for the record only
  deletes the record, and one that finds an incomplete run (a sender killed mid-way) deletes that
  run and sends the record again.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wmcore.config import Params
from wmcore.tracking.runinfo import MAX_PARAM_CHARS, absolute_uri, ended_with_status, git_tags, tracking_uri

log = logging.getLogger(__name__)

SPOOL_FOLDER = "tracking-spool"
RECORD_FILE = "record.json"
LOCK_FILE = ".send.lock"
SEND_LOG = "send.log"
RECORD_TAG, COMPLETE_TAG = "wm_record_id", "wm_record_complete"
RECORD_VERSION = 1
MAX_PARAMS, MAX_METRICS = 100, 1000  # per log_batch request (MLflow's limits)


def spool_dir(params: Params) -> Path:
    return Path(params.paths.cache_dir) / SPOOL_FOLDER


class DeferredRunLogger:
    """RunLogger that keeps the run in memory; artifacts are copied into the record folder at once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder  # the record's temporary folder
        self.params: dict[str, str] = {}
        self.metrics: list[list[Any]] = []  # [key, value, timestamp ms, step]
        self.tags: dict[str, str] = {}
        self.artifacts: list[list[str | None]] = []  # [file inside the record folder, artifact_path]

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update({k: str(v)[:MAX_PARAM_CHARS] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self.metrics += [[k, float(v), now, step or 0] for k, v in metrics.items() if v is not None]

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        inside = Path("artifacts") / f"{len(self.artifacts)}" / Path(path).name
        try:
            (self.folder / inside).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.folder / inside)  # the step's output may be replaced before it is sent
        except OSError as exc:
            log.warning("artifact %s is left out of the tracking record (%s)", path, exc)
            return
        self.artifacts.append([str(inside), artifact_path])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})


@contextlib.contextmanager
def deferred_step_run(
    step: str, params: Params, send: bool = True, out_dir: str | Path | None = None
) -> Iterator[Any]:
    """The run of `step`, recorded in the spool when the block ends (FINISHED, FAILED or KILLED);
    then (send=True) a detached sender is started. Exceptions of the block propagate; tracking never
    stops the step: a spool that cannot be written means the run is logged inline (`step_run`)."""
    spool = spool_dir(params)
    record_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{step}"
    folder = spool / f".tmp-{record_id}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from wmcore.tracking.mlflow_run import step_run  # deferred on purpose: only this fallback pays mlflow's import

        log.warning("cannot write tracking records to %s (%s); step %s logs to MLflow directly", spool, exc, step)
        with step_run(step, params, out_dir) as inline:  # out_dir: where its JSONL fallback would go
            yield inline
        return
    run = DeferredRunLogger(folder)
    run.log_params(params.flat())
    start_ms = int(time.time() * 1000)

    def finish(status: str) -> None:
        record = {"version": RECORD_VERSION, "record_id": record_id, "step": step,
                  "uri": absolute_uri(tracking_uri(params)), "experiment": params.tracking.experiment,
                  "start_ms": start_ms, "end_ms": int(time.time() * 1000), "status": status,
                  "tags": {**source_tags(), "step": step, **git_tags(), **run.tags}, "params": run.params,
                  "metrics": run.metrics, "artifacts": run.artifacts}  # fmt: skip
        try:
            (folder / RECORD_FILE).write_text(json.dumps(record), encoding="utf-8")
            folder.rename(spool / record_id)
        except OSError as exc:  # e.g. the disk filled up: the step's own outputs are complete
            log.warning("could not record the MLflow run of step %s in %s (%s)", step, spool, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return
        if send:
            start_sender(spool)

    with ended_with_status(finish):
        yield run


def source_tags() -> dict[str, str]:
    """The user and source tags MLflow's fluent API puts on a run it starts (the runs table's User/Source)."""
    tags = {"mlflow.source.name": Path(sys.argv[0]).name, "mlflow.source.type": "LOCAL"}
    with contextlib.suppress(OSError, KeyError):  # no user name in a bare container
        tags["mlflow.user"] = getpass.getuser()
    return tags


def start_sender(spool: Path) -> None:
    """Start `python -m wmcore.tracking.deferred SPOOL` detached (own session, lowest priority)."""
    try:
        with open(spool / SEND_LOG, "ab") as err:
            subprocess.Popen([sys.executable, "-m", __name__, str(spool)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, close_fds=True)  # fmt: skip
    except OSError as exc:  # no process to spare: the record waits for the next step's sender
        log.warning("could not start the tracking sender (%s); the run waits in %s", exc, spool)


def pending_records(spool: Path) -> list[Path]:
    """Whole records waiting in the spool, oldest first."""
    if not spool.is_dir():
        return []
    return sorted(p for p in spool.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / RECORD_FILE).is_file())


@contextlib.contextmanager
def _send_lock(spool: Path, wait: bool) -> Iterator[bool]:
    with open(spool / LOCK_FILE, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def send_pending(spool: str | Path, wait: bool = False) -> dict[str, int]:
    """Send every record of `spool` to its MLflow store; returns {"sent", "kept", "busy"}.

    busy=1: another sender holds the lock (wait=False returns at once; wait=True waits for it).
    A record that fails stays (kept) and the other records of its store wait for the next sender.
    """
    spool = Path(spool)
    counts = {"sent": 0, "kept": 0, "busy": 0}
    if not spool.is_dir():
        return counts
    with _send_lock(spool, wait) as locked:
        if not locked:
            counts["busy"] = 1
            return counts
        failed_uris: set[str] = set()
        while True:  # records written while sending go in the same pass
            todo = [(p, uri) for p in pending_records(spool) if (uri := _uri_of(p)) not in failed_uris]
            if not todo:
                break
            for folder, uri in todo:
                if uri in failed_uris:  # an earlier record of this pass found its store failing
                    continue
                try:
                    _send_record(folder)
                except Exception as exc:  # the store is down or refuses: keep the record for the next sender
                    log.warning("tracking record %s kept in %s: MLflow store %s failed (%s)", folder.name, spool, uri, exc)
                    failed_uris.add(uri)
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                counts["sent"] += 1
        counts["kept"] = len(pending_records(spool))
    return counts


def _uri_of(folder: Path) -> str:
    try:
        return str(json.loads((folder / RECORD_FILE).read_text(encoding="utf-8")).get("uri", ""))
    except (OSError, ValueError):
        return ""


def _send_record(folder: Path) -> str:
    """Create the MLflow run of one record (or find the complete one already made); its run id."""
    # deferred on purpose: the step's process imports this module and must not load mlflow; the sender does
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from wmcore.tracking.mlflow_run import experiment_id_of  # deferred on purpose (see above)

    record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"record version {record.get('version')!r}, expected {RECORD_VERSION}")
    client = MlflowClient(tracking_uri=record["uri"])
    experiment_id = experiment_id_of(client, record["experiment"])
    found = client.search_runs([experiment_id], filter_string=f"tags.{RECORD_TAG} = '{record['record_id']}'")
    for run in found:
        if run.data.tags.get(COMPLETE_TAG) == "true":
            return run.info.run_id
        client.delete_run(run.info.run_id)  # left half-sent by a sender that was killed
    tags = {**record["tags"], RECORD_TAG: record["record_id"]}
    run_id = client.create_run(experiment_id, start_time=record["start_ms"], tags=tags, run_name=record["step"]).info.run_id
    params = [Param(k, v) for k, v in record["params"].items()]
    for i in range(0, len(params), MAX_PARAMS):
        client.log_batch(run_id, params=params[i : i + MAX_PARAMS])
    metrics = [Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]]
    for i in range(0, len(metrics), MAX_METRICS):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS])
    for inside, artifact_path in record["artifacts"]:
        client.log_artifact(run_id, str(folder / inside), artifact_path)
    client.log_batch(run_id, tags=[RunTag(COMPLETE_TAG, "true")])
    client.set_terminated(run_id, record["status"], end_time=record["end_ms"])
    return run_id


def main(argv: list[str] | None = None) -> int:
    """The detached sender: `python -m wmcore.tracking.deferred SPOOL`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m wmcore.tracking.deferred SPOOL", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.nice(19)  # after the step's process: never compete with the next foreground job
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    send_pending(args[0], wait=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
