"""MLflow tracking of the pipeline: one run per step, nested under the pipeline's parent run.

- `step_run(step, params)`: a run for one step (params flattened, tags, system metrics), nested
  under the run named by env WMDETECT_PARENT_RUN_ID when `parent_run` (the flow) opened one,
  even from another process.
- `parent_run(params, name)`: the pipeline's parent run; sets WMDETECT_PARENT_RUN_ID while open.
- `log_prepared_input(...)`: the prepared data's content fingerprint as an MLflow dataset input.
- `log_pipeline_summary(...)`: the headline metrics and the dataset on the parent run.
- `log_and_register_model(...)`: logs the evaluated model, registers a version tagged with the
  promotion's winner, its source file and the test data it was scored on, and moves the
  `champion` alias to it only when it beats the current champion on the same test data (same
  fingerprint) by the export's rule (wmcore.metrics.promotion: a higher test F1, held-out F1 no
  lower, real-photo false-positive area no higher); scores on other test data are not compared.
- `runs_table_url(...)`: the MLflow UI address of the experiment's runs table with the headline columns.

Experiments are created as classic ML experiments (not GenAI) with a shared runs-table view of
the headline metrics; a sqlite store keeps their artifacts beside its database file (`mlruns/`),
whatever the working directory of the step that created them.

Tracking never stops a step. Off (`tracking.enabled: false`) -> NullLogger. A store that cannot be
reached (probed once, no retries, `tracking.probe_timeout_s`) or that fails mid-run -> one warning
naming the local JSONL file (`tracking.jsonl` in the step's output folder) that gets the records.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from wmcore.config import Params
from wmcore.data.fingerprint import DataFingerprint, split_fingerprint
from wmcore.errors import WmError, first_line
from wmcore.metrics.promotion import Scores, why_not
from wmcore.runtime.report import HEADLINE_METRICS, headline_metrics
from wmcore.tracking.runinfo import MAX_PARAM_CHARS, PARENT_RUN_ENV, ended_with_status, git_tags, tracking_uri
from wmcore.tracking.sink import NullLogger, RunLogger

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
CHAMPION_METRIC = "test/f1"  # run metric compared to decide the champion (logged by evaluation)
# with these two, also logged by evaluation (wmcore.metrics.promotion: neither may get worse)
HELDOUT_METRIC, REAL_FP_METRIC = "test_heldout/f1", "real_test/fp_area"
TEST_DATA_TAG = "test_data_fingerprint"  # model version tag: the test split the version was scored on
DATASET_CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag naming a dataset's role in a run
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"  # the UI's runs view
RUNS_VIEW_KEY = "wmdetect-runs"  # shared view of the runs table (experiment tag mlflow.sharedViewState.<key>)
RUNS_VIEW_COLUMNS = (
    "attributes.`Dataset`", "attributes.`Models`",
    *(f"metrics.`{name}`" for name, _, _ in HEADLINE_METRICS), "metrics.`system/peak_mem_mb`",
)  # fmt: skip
FALLBACK_FILE = "tracking.jsonl"
# Where each step's fallback records go. `prepare` writes to the cache, not into the DVC-hashed dataset.
STEP_OUTPUT_KEYS = {"train": "train_dir", "evaluate": "evaluate_dir", "predict": "predict_dir"}

_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    """Warn the first time for `key` in this process; later the same news is only logged at INFO."""
    if key in _warned:
        log.info(message, *args)
        return
    _warned.add(key)
    log.warning(message, *args)


def step_output_dir(step: str, params: Params) -> Path:
    """The folder a step writes to (its fallback tracking.jsonl goes there)."""
    key = STEP_OUTPUT_KEYS.get(step)
    return Path(getattr(params.paths, key)) if key else Path(params.paths.cache_dir) / "tracking" / step


# --------------------------------------------------------------------------- loggers


class JsonlRunLogger:
    """RunLogger writing one JSON line per call to a local file (when MLflow cannot be reached).

    Lines: {"time": ISO-8601 UTC, "kind": "params" | "metrics" | "artifact" | "tags", "data": {...},
    "step": int | None}. Artifacts are recorded by path (the file itself is already local).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _write(self, kind: str, data: dict[str, Any], step: int | None = None) -> None:
        line = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "kind": kind, "step": step, "data": data}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One append of one whole line: concurrent writers and crashes leave whole lines.
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, default=str) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        self._write("params", params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._write("metrics", {k: v for k, v in metrics.items() if v is not None}, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._write("artifact", {"path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._write("tags", tags)

    def log_dataset(self, dataset: Dataset, context: str) -> None:
        self._write("dataset", {"name": dataset.name, "digest": dataset.digest, "source": dataset.source,
                                "profile": dataset.profile, "context": context})  # fmt: skip


class MlflowRunLogger:
    """RunLogger of one MLflow run; on the first failed call it warns and continues in a JSONL file."""

    def __init__(self, client: MlflowClient, run_id: str, fallback_path: str | Path) -> None:
        self.client, self.run_id = client, run_id
        self.fallback_path = Path(fallback_path)
        self._fallback: JsonlRunLogger | None = None

    @property
    def is_tracking(self) -> bool:
        """True while calls still reach MLflow (False after a failure switched to the JSONL file)."""
        return self._fallback is None

    def _call(self, send: Callable[[], Any], replay: Callable[[JsonlRunLogger], None]) -> None:
        if self._fallback is None:
            try:
                send()
                return
            except Exception as exc:  # any failure of the store must not stop the step
                log.warning("MLflow logging failed (%s); run %s continues in %s", exc, self.run_id, self.fallback_path)
                self._fallback = JsonlRunLogger(self.fallback_path)
        replay(self._fallback)

    def log_params(self, params: dict[str, Any]) -> None:
        batch = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        self._call(lambda: self.client.log_batch(self.run_id, params=batch), lambda f: f.log_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        self._call(lambda: self.client.log_batch(self.run_id, metrics=batch), lambda f: f.log_metrics(metrics, step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(
            lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
            lambda f: f.log_artifact(path, artifact_path),
        )

    def set_tags(self, tags: dict[str, str]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call(lambda: self.client.log_batch(self.run_id, tags=batch), lambda f: f.set_tags(tags))

    def log_dataset(self, dataset: Dataset, context: str) -> None:
        """The dataset as an input of the run (the runs table's Dataset column), `context` its role."""
        inputs = [DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, context)])]
        self._call(lambda: self.client.log_inputs(self.run_id, datasets=inputs),
                   lambda f: f.log_dataset(dataset, context))  # fmt: skip


# --------------------------------------------------------------------------- connecting


@contextlib.contextmanager
def _no_retry_env(timeout_s: int) -> Iterator[None]:
    """MLflow HTTP calls fail fast inside this block (MLflow's defaults retry for minutes)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _artifact_location(uri: str, name: str) -> str | None:
    """<folder of the sqlite file>/mlruns/<name> for a sqlite store; None (MLflow's default) otherwise.

    MLflow's default is ./mlruns of the working directory at creation: a test or a DVC experiment
    running elsewhere would scatter the artifacts of one store over several folders.
    """
    if not uri.startswith("sqlite:///"):
        return None
    return str(Path(uri.removeprefix("sqlite:///")).absolute().parent / "mlruns" / name)


def runs_view_tags() -> dict[str, str]:
    """Experiment tags: a classic ML experiment (the UI opens on runs, not GenAI), and a shared runs-table
    view (`?viewStateShareKey=wmdetect-runs`) showing the dataset, models and the headline metrics."""
    view = {"selectedColumns": list(RUNS_VIEW_COLUMNS)}
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, f"mlflow.sharedViewState.{RUNS_VIEW_KEY}": json.dumps(view)}


def experiment_id_of(client: MlflowClient, name: str) -> str:
    """Id of experiment `name`: created (artifacts beside a sqlite store, the runs view) or restored as needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=_artifact_location(client.tracking_uri, name), tags=runs_view_tags()
            )
        except MlflowException:  # created meanwhile by another step
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        log.info("MLflow experiment %r was deleted; restoring it", name)
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def connect(params: Params) -> tuple[MlflowClient, str] | str:
    """(client, experiment id) of the configured store, or the reason it cannot be used.

    The store is probed once, without retries and with `tracking.probe_timeout_s`, so an
    unreachable server costs seconds, not the minutes of MLflow's default retry policy.
    """
    uri = tracking_uri(params)
    with _no_retry_env(params.tracking.probe_timeout_s):
        try:
            client = MlflowClient(tracking_uri=uri)
            return client, experiment_id_of(client, params.tracking.experiment)
        except Exception as exc:  # unreachable server, bad URI, unwritable sqlite file, ...
            return f"MLflow tracking store {uri} cannot be used ({first_line(exc)[:200]})"


# --------------------------------------------------------------------------- runs


def _parent_of_new_run(client: MlflowClient) -> tuple[str | None, str | None]:
    """(parent run id, its experiment id) from env WMDETECT_PARENT_RUN_ID; (None, None) if unset or gone."""
    parent_id = os.environ.get(PARENT_RUN_ENV)
    if not parent_id:
        return None, None
    try:
        return parent_id, client.get_run(parent_id).info.experiment_id
    except MlflowException as exc:
        _warn_once(f"parent:{parent_id}", "%s=%s is not a run of this store (%s); runs are not nested", PARENT_RUN_ENV, parent_id, exc)
        return None, None


def _start_step_run(client: MlflowClient, experiment_id: str, step: str, params: Params) -> str:
    """Start the fluent MLflow run of `step` (fluent, so MLflow's system-metrics monitor can attach)."""
    mlflow.set_tracking_uri(client.tracking_uri)
    system_metrics = params.tracking.system_metrics
    if system_metrics and importlib.util.find_spec("psutil") is None:
        _warn_once("psutil", "tracking.system_metrics is on but psutil is not installed; system metrics are off")
        system_metrics = False
    active = mlflow.active_run()
    parent_id, parent_experiment = (None, None) if active else _parent_of_new_run(client)
    run = mlflow.start_run(
        experiment_id=active.info.experiment_id if active else parent_experiment or experiment_id,
        run_name=step,
        nested=active is not None,  # a step inside a step (same thread) nests under it
        parent_run_id=parent_id,
        tags={"step": step, **git_tags()},
        log_system_metrics=system_metrics,
    )
    return run.info.run_id


def _end_step_run(run_id: str, status: str) -> None:
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        return
    try:
        mlflow.end_run(status)
    except Exception as exc:  # the store went away: the step's own outputs are complete
        log.warning("could not close MLflow run %s (%s)", run_id, exc)


@contextlib.contextmanager
def step_run(step: str, params: Params, out_dir: str | Path | None = None) -> Iterator[RunLogger]:
    """Open the tracking run of one pipeline step and yield its RunLogger.

    Args:
        step: step name ("train", "evaluate", ...): the run name and the `step` tag.
        params: logged flattened (`params.flat()`); `tracking` settings decide where and whether.
        out_dir: folder of the JSONL fallback file; None = the step's output folder.
    Yields: MlflowRunLogger, NullLogger (tracking off) or JsonlRunLogger (store unreachable).
    The run ends FINISHED, FAILED (exception) or KILLED (Ctrl-C); exceptions propagate.
    """
    if not params.tracking.enabled:
        yield NullLogger()
        return
    fallback = Path(out_dir) if out_dir is not None else step_output_dir(step, params)
    fallback = fallback / FALLBACK_FILE
    connection = connect(params)
    run_id = None
    if not isinstance(connection, str):
        try:
            run_id = _start_step_run(*connection, step, params)
        except Exception as exc:  # e.g. the server went away after the probe
            connection = f"MLflow run of step {step!r} could not start ({exc})"
    if run_id is None:
        _warn_once(f"fallback:{connection}", "%s; step %s logs to %s instead", connection, step, fallback)
        local = JsonlRunLogger(fallback)
        local.log_params(params.flat())
        yield local
        return
    run_logger = MlflowRunLogger(connection[0], run_id, fallback)
    run_logger.log_params(params.flat())
    with ended_with_status(lambda status: _end_step_run(run_id, status)):
        yield run_logger


@contextlib.contextmanager
def parent_run(params: Params, name: str) -> Iterator[str | None]:
    """The pipeline flow's parent run: yields its id (None when tracking is off or unreachable).

    While open, env WMDETECT_PARENT_RUN_ID holds the id, so `step_run` in this process or in
    child processes (DVC stages, workers) nests under it. The previous value is restored on exit.
    """
    connection = connect(params) if params.tracking.enabled else "tracking.enabled is false"
    if isinstance(connection, str):
        if params.tracking.enabled:
            _warn_once(f"parent:{connection}", "%s; pipeline %s is not tracked", connection, name)
        yield None
        return
    client, experiment_id = connection
    run_id = client.create_run(experiment_id, run_name=name, tags={"step": "pipeline", **git_tags()}).info.run_id
    MlflowRunLogger(client, run_id, step_output_dir("pipeline", params) / FALLBACK_FILE).log_params(params.flat())
    previous = os.environ.get(PARENT_RUN_ENV)
    os.environ[PARENT_RUN_ENV] = run_id

    def end(status: str) -> None:
        if previous is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = previous
        with contextlib.suppress(Exception):  # an unreachable store must not mask the flow's own result
            client.set_terminated(run_id, status)

    with ended_with_status(end):
        yield run_id


# --------------------------------------------------------------------------- datasets, the parent's headline, the UI


def prepared_dataset(fingerprint: DataFingerprint, prepared: str | Path) -> Dataset:
    """The MLflow dataset entity of a prepared dataset: named `prepared`, digest = its content fingerprint."""
    profile = {"samples": fingerprint.samples, "splits": list(fingerprint.splits)}
    return Dataset("prepared", fingerprint.digest, "local", json.dumps({"uri": str(Path(prepared).absolute())}),
                   profile=json.dumps(profile))  # fmt: skip


def log_dataset(run_logger: RunLogger, fingerprint: DataFingerprint, prepared: str | Path, context: str) -> None:
    """Log the prepared data (its content fingerprint) as an input of the run, if the logger records datasets."""
    if isinstance(run_logger, MlflowRunLogger | JsonlRunLogger):
        run_logger.log_dataset(prepared_dataset(fingerprint, prepared), context)


def log_prepared_input(run_logger: RunLogger, prepared: str | Path, context: str) -> None:
    """The dataset in `prepared` (every split) as an input of the run; a missing manifest is one warning."""
    if not isinstance(run_logger, MlflowRunLogger | JsonlRunLogger):
        return
    try:
        log_dataset(run_logger, split_fingerprint(prepared), prepared, context)
    except WmError as exc:
        log.warning("%s; the run has no dataset input", exc)


def log_pipeline_summary(params: Params, run_id: str | None, results: dict[str, Any], prepared: Path) -> None:
    """The parent run's headline metrics (wmcore.runtime.report.headline_metrics of the steps' result files)
    and the prepared data's fingerprint as its dataset input.

    No-op without a parent run; a store that fails is one warning, never an error.
    """
    if run_id is None:
        return
    connection = connect(params)
    if isinstance(connection, str):
        log.warning("%s; the pipeline's headline metrics are not logged", connection)
        return
    run_logger = MlflowRunLogger(connection[0], run_id, step_output_dir("pipeline", params) / FALLBACK_FILE)
    run_logger.log_metrics(headline_metrics(results))
    log_prepared_input(run_logger, prepared, "pipeline")


def runs_table_url(params: Params, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The MLflow UI address of tracking.experiment's runs table with the headline columns.

    Creates the experiment when missing and adds the runs-view tags to an experiment made before them.
    Raises WmError when the store cannot be used.
    """
    connection = connect(params)
    if isinstance(connection, str):
        raise WmError(connection)
    client, experiment_id = connection
    tags = client.get_experiment(experiment_id).tags
    for key, value in runs_view_tags().items():
        if tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)
    return (f"http://{host}:{port}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={RUNS_VIEW_KEY}&workflowType=machine_learning")  # fmt: skip


# --------------------------------------------------------------------------- model registry


def _log_model(model_path: Path, run_logger: MlflowRunLogger) -> Any:
    """Log the UNet of `model_path` to the run (pytorch flavour); returns MLflow's ModelInfo.

    MLflow 3 stores it as a torch.export graph (pt2: no pickled code), taking float32 input
    (N, 3, H, W) in [0, 1] with H and W multiples of 2**depth, and returning logits (N, 1, H, W).
    The example has batch 2 and those dimensions are -1 in the signature, so the graph keeps
    them dynamic (a size-1 example dimension would be frozen). The safe weights file itself,
    with the calibrated thresholds in meta, rides along as an extra file: `wm predict --model
    models:/NAME@champion` loads that one, at any image size.
    """
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from wmcore.model.checkpoint import load_model  # deferred on purpose, as torch: only where a model is logged

    model, ckpt = load_model(model_path)
    side = 4 * model.multiple
    example = np.linspace(0.0, 1.0, 2 * 3 * side * side, dtype=np.float32).reshape(2, 3, side, side)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.in_channels, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))]),
    )
    meta = {k: v for k, v in (ckpt.get("meta") or {}).items() if isinstance(v, str | int | float | bool)}
    return mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        # Given explicitly: inferring requirements imports and probes the environment (slow).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
        extra_files=[str(model_path)],
        metadata=meta,
        run_id=run_logger.run_id,
    )


@dataclass(frozen=True)
class Champion:
    """The registered model's champion: version, its scores (its run's metrics), the fingerprint of its test data."""

    version: str
    scores: Scores
    test_data: str | None


def current_champion(client: MlflowClient, name: str) -> Champion | None:
    """The champion of registered model `name`; None without one.

    Its F1 is the champion run's `test/f1` metric, else the version's `test/f1` tag; its test data is
    the version's `test_data_fingerprint` tag (None for versions registered before it existed).
    """
    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    tags = version.tags or {}
    run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    value = run_metrics.get(CHAMPION_METRIC)
    if value is None and CHAMPION_METRIC in tags:
        with contextlib.suppress(ValueError):
            value = float(tags[CHAMPION_METRIC])
    scores = Scores(value, run_metrics.get(HELDOUT_METRIC), run_metrics.get(REAL_FP_METRIC))
    return Champion(str(version.version), scores, tags.get(TEST_DATA_TAG))


def promote_if_better(
    client: MlflowClient, name: str, version: str, scores: Scores, test_data: str | None = None
) -> tuple[bool, str]:
    """Move the champion alias to `version` if its scores beat the champion's on the same test data
    (wmcore.metrics.promotion: a higher test F1, held-out F1 and real-photo area no worse).

    Scores are compared only when both were measured on the same test data (`test_data`: the test
    split's content fingerprint; None on both sides counts as the same); otherwise the champion stays
    and the new version is not compared. Returns (moved, the reason in words).
    """
    current = current_champion(client, name)
    test_f1 = scores.test_f1
    if test_f1 is None:
        moved, reason = False, "no test F1"
    elif current is None:
        moved, reason = True, "first champion"
    elif current.test_data != test_data:
        moved, reason = False, (f"not compared: champion version {current.version} was scored on test data "
                                f"{current.test_data or 'unknown'}, this version on {test_data or 'unknown'}")  # fmt: skip
    elif (lost := why_not(scores, current.scores)) is None:  # the one promotion rule, as the export's
        moved, reason = True, f"test F1 {test_f1:.4f} beats version {current.version}'s {current.scores.test_f1}"
    else:
        moved, reason = False, f"against version {current.version}: {lost}"
    if moved:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    client.set_model_version_tag(name, version, "champion_decision", reason)
    log.log(logging.WARNING if reason.startswith("not compared") else logging.INFO,
            "model %s version %s %s %s: %s", name, version, "is now" if moved else "is not", CHAMPION_ALIAS,
            reason)  # fmt: skip
    return moved, reason


def log_and_register_model(
    model_path: str | Path,
    scores: Scores,
    params: Params,
    run_logger: RunLogger,
    version_tags: dict[str, str] | None = None,
) -> bool:
    """Log the evaluated model to the step's run, register it, and crown it if it is better.

    Args:
        model_path: deployable weights written by evaluation (<evaluate_dir>/model.pt).
        scores: its promotion scores (`Scores.of(metrics)`; None or NaN test F1: registered, never champion).
        params: tracking.registered_model names the registered model; tracking.log_model switches this off.
        run_logger: the open step run (from `step_run`); anything but a live MLflow run skips this.
        version_tags: tags of the new version, e.g. `promoted` (which model won the promotion), `source`
            (its weights file) and TEST_DATA_TAG (the test split's fingerprint: the champion is compared
            only on the same one).
    Returns: True when the new version became `champion`.
    """
    if not params.tracking.log_model or not isinstance(run_logger, MlflowRunLogger) or not run_logger.is_tracking:
        log.info("model not registered (tracking off, unreachable, or tracking.log_model false)")
        return False
    name = params.tracking.registered_model
    test_f1 = None if scores.test_f1 is None or not math.isfinite(scores.test_f1) else float(scores.test_f1)
    scores = replace(scores, test_f1=test_f1)
    client = run_logger.client
    try:
        info = _log_model(Path(model_path), run_logger)
        if test_f1 is not None and CHAMPION_METRIC not in client.get_run(run_logger.run_id).data.metrics:
            client.log_metric(run_logger.run_id, CHAMPION_METRIC, test_f1)
        mlflow.set_tracking_uri(client.tracking_uri)  # register_model uses the global URI
        tags = {"source": str(model_path), **(version_tags or {}), CHAMPION_METRIC: str(test_f1)}
        with contextlib.redirect_stderr(io.StringIO()) as said:  # MLflow prints "Created version '2' ..." itself
            version = mlflow.register_model(info.model_uri, name, tags=tags).version
        log.info("%s", said.getvalue().strip())
        return promote_if_better(client, name, str(version), scores, tags.get(TEST_DATA_TAG))[0]
    except (MlflowException, OSError) as exc:
        log.warning("model %s not logged/registered in MLflow (%s); the file itself is unaffected", model_path, exc)
        return False
