"""MLflow tracking on a temporary sqlite store: nesting, flattened params, champion alias, datasets, fallbacks."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests.fixtures import make_tiny_prepared
from wmcore.config import Params, validate
from wmcore.data.fingerprint import split_fingerprint
from wmcore.metrics.promotion import Scores
from wmcore.model import UNet
from wmcore.model.checkpoint import checkpoint_dict, save_checkpoint
from wmcore.tracking.mlflow_run import (
    CHAMPION_ALIAS,
    EXPERIMENT_KIND_TAG,
    PARENT_RUN_ENV,
    RUNS_VIEW_KEY,
    TEST_DATA_TAG,
    JsonlRunLogger,
    MlflowRunLogger,
    log_and_register_model,
    log_dataset,
    log_pipeline_summary,
    parent_run,
    runs_table_url,
    step_run,
    tracking_uri,
)
from wmcore.tracking.sink import NullLogger


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One sqlite store for the module (creating its tables takes seconds); artifacts beside it."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow puts a new experiment's artifacts under ./mlruns
        mp.setenv("MLFLOW_TRACKING_URI", uri)  # the Makefile exports one: the test store must win
        mp.delenv(PARENT_RUN_ENV, raising=False)
        yield uri, root


def make_params(root: Path, **tracking: object) -> Params:
    return validate(
        {
            "paths": {name: str(root / name) for name in ("train_dir", "evaluate_dir", "predict_dir", "cache_dir")},
            "tracking": {"experiment": "tests", "system_metrics": False, **tracking},
        }
    )


def write_model(path: Path, threshold: float = 0.4) -> Path:
    model = UNet(base_width=4, depth=2)
    save_checkpoint(path, checkpoint_dict(model, {"threshold": threshold}))
    return path


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_env_tracking_uri_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    params = make_params(tmp_path, uri="sqlite:///from-params.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(params) == "sqlite:///from-params.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert tracking_uri(params) == "sqlite:///from-env.db"


def test_step_run_nested_under_parent_with_flat_params(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = store
    params = make_params(tmp_path, system_metrics=True)  # no GPU here: NVML fails inside MLflow, not us
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    with parent_run(params, "pipeline") as parent_id:
        assert parent_id and os.environ[PARENT_RUN_ENV] == parent_id
        with step_run("train", params) as run_logger:
            assert isinstance(run_logger, MlflowRunLogger)
            run_logger.log_metrics({"loss": 0.25}, step=3)
            run_logger.log_artifact(artifact, artifact_path="notes")
    assert PARENT_RUN_ENV not in os.environ
    client = MlflowClient(uri)
    child, parent = client.get_run(run_logger.run_id), client.get_run(parent_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.info.experiment_id == parent.info.experiment_id
    assert child.data.tags["step"] == "train" and child.info.run_name == "train"
    assert child.data.params == {k: str(v) for k, v in params.flat().items()}
    assert child.data.params["train.optimizer.lr"] == str(params.train.optimizer.lr)
    assert child.data.metrics["loss"] == 0.25
    assert [a.path for a in client.list_artifacts(run_logger.run_id, "notes")] == ["notes/note.txt"]
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"


def test_standalone_run_marked_failed_on_error(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = store
    with pytest.raises(ValueError, match="boom"), step_run("evaluate", make_params(tmp_path)) as run_logger:
        raise ValueError("boom")
    run = MlflowClient(uri).get_run(run_logger.run_id)
    assert run.info.status == "FAILED" and "mlflow.parentRunId" not in run.data.tags


def test_champion_moves_only_on_improvement(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = store
    params = make_params(tmp_path, registered_model="wm-champion-test")
    outcomes = []
    for i, f1 in enumerate([0.5, 0.4, 0.7]):
        with step_run("evaluate", params) as run_logger:
            outcomes.append(log_and_register_model(write_model(tmp_path / f"model{i}.pt"), Scores(f1), params, run_logger))
    assert outcomes == [True, False, True]
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("wm-champion-test", CHAMPION_ALIAS)
    assert str(champion.version) == "3"
    assert client.get_run(champion.run_id).data.metrics["test/f1"] == 0.7
    assert len(client.search_model_versions("name='wm-champion-test'")) == 3


def test_champion_does_not_move_to_a_higher_test_f1_that_pays_on_held_out_styles(
    store: tuple[str, Path], tmp_path: Path
) -> None:
    """The registry applies the export's rule: the champion's held-out F1 is read from its run's metrics."""
    uri, _ = store
    params = make_params(tmp_path, registered_model="wm-guard-test")
    outcomes = []
    for i, (test, heldout) in enumerate([(0.60, 0.73), (0.61, 0.53), (0.62, 0.74)]):
        with step_run("evaluate", params) as run_logger:
            run_logger.log_metrics({"test_heldout/f1": heldout})  # as evaluation logs it
            scores = Scores(test, heldout)
            outcomes.append(log_and_register_model(write_model(tmp_path / f"g{i}.pt"), scores, params, run_logger))
    assert outcomes == [True, False, True]
    client = MlflowClient(uri)
    second = client.get_model_version("wm-guard-test", "2")
    assert second.tags["champion_decision"] == "against version 1: held-out F1 0.5300 is below 0.7300"


def test_champion_is_compared_only_on_the_same_test_data(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = store
    params = make_params(tmp_path, registered_model="wm-test-data")
    scored = [(0.5, "aaaa"), (0.9, "bbbb"), (0.6, "aaaa"), (0.55, "aaaa")]  # v2: 96 vs 16 test images, say
    outcomes = []
    for i, (f1, test_data) in enumerate(scored):
        tags = {"promoted": "pretrained", "source": "models/wmdetect.pt", TEST_DATA_TAG: test_data}
        with step_run("evaluate", params) as run_logger:
            outcomes.append(log_and_register_model(write_model(tmp_path / f"v{i}.pt"), Scores(f1), params, run_logger, tags))
    assert outcomes == [True, False, True, False]  # 0.9 on other test data is never compared with 0.5
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("wm-test-data", CHAMPION_ALIAS)
    assert (str(champion.version), champion.tags[TEST_DATA_TAG]) == ("3", "aaaa")
    assert champion.tags["promoted"] == "pretrained" and champion.tags["source"] == "models/wmdetect.pt"
    other = client.get_model_version("wm-test-data", "2")
    assert other.tags["champion_decision"].startswith("not compared: champion version 1 was scored on test data aaaa")


def test_datasets_headline_metrics_and_the_runs_view(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, root = store
    prepared = make_tiny_prepared(tmp_path / "prepared", n_train=2, n_val=1, n_test=2)
    fingerprint = split_fingerprint(prepared)
    params = make_params(tmp_path, experiment="tests-datasets")
    results = {"evaluate": {"test": {"f1": 0.6}, "real_test": {"fp_area": 0.002}},
               "train": {"images_per_s": 3.5, "mem_peak_mb": 800.0}, "predict": {"images_per_s": 9.0, "peak_rss_mb": 600.0}}
    with parent_run(params, "pipeline") as parent_id:
        with step_run("prepare", params) as run_logger:
            log_dataset(run_logger, fingerprint, prepared, context="prepared")
        log_pipeline_summary(params, parent_id, results, prepared)
    client = MlflowClient(uri)
    for run_id in (run_logger.run_id, parent_id):
        (dataset_input,) = client.get_run(run_id).inputs.dataset_inputs
        assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("prepared", fingerprint.digest)
    assert client.get_run(parent_id).data.metrics == {"test/f1": 0.6, "real_test/fp_area": 0.002,
                                                      "train/images_per_s": 3.5, "predict/images_per_s": 9.0,
                                                      "system/peak_mem_mb": 800.0}  # fmt: skip
    experiment = client.get_experiment_by_name("tests-datasets")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"])
    assert "metrics.`test/f1`" in view["selectedColumns"] and "attributes.`Dataset`" in view["selectedColumns"]
    assert Path(experiment.artifact_location) == root / "mlruns" / "tests-datasets"  # beside the sqlite file
    url = runs_table_url(params, port=5123)
    assert url == (f"http://127.0.0.1:5123/#/experiments/{experiment.experiment_id}/runs"
                   f"?viewStateShareKey={RUNS_VIEW_KEY}&workflowType=machine_learning")  # fmt: skip


def test_split_fingerprint_follows_the_pixels_not_the_recipe(tmp_path: Path) -> None:
    a = make_tiny_prepared(tmp_path / "a", n_train=2, n_val=1, n_test=2)
    b = make_tiny_prepared(tmp_path / "b", n_train=4, n_val=1, n_test=2)  # same seed: same test samples
    assert split_fingerprint(a, ("test",)) == split_fingerprint(b, ("test",))
    assert split_fingerprint(a).digest != split_fingerprint(b).digest
    mask = next((a / "test" / "masks").iterdir())
    mask.write_bytes(mask.read_bytes() + b"\0")
    assert split_fingerprint(a, ("test",)).digest != split_fingerprint(b, ("test",)).digest


def test_unreachable_server_falls_back_to_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_uri())
    params = make_params(tmp_path)
    with parent_run(params, "pipeline") as parent_id, step_run("evaluate", params) as run_logger:
        assert parent_id is None and PARENT_RUN_ENV not in os.environ
        assert isinstance(run_logger, JsonlRunLogger)
        run_logger.log_metrics({"test_f1": 0.5, "undefined": None})
        registered = log_and_register_model(write_model(tmp_path / "m.pt"), Scores(0.5), params, run_logger)
    assert registered is False
    lines = [json.loads(line) for line in (tmp_path / "evaluate_dir" / "tracking.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["params", "metrics"]
    assert lines[0]["data"]["tracking.experiment"] == "tests"
    assert lines[1]["data"] == {"test_f1": 0.5}


class FailingClient:
    """Stands in for a store that went away after the run started."""

    def log_batch(self, *args: object, **kwargs: object) -> None:
        raise ConnectionError("server went away")


def test_failure_mid_run_switches_to_jsonl(tmp_path: Path) -> None:
    run_logger = MlflowRunLogger(FailingClient(), "run123", tmp_path / "tracking.jsonl")  # type: ignore[arg-type]
    assert run_logger.is_tracking
    run_logger.log_metrics({"loss": 1.5}, step=2)
    run_logger.set_tags({"step": "train"})
    assert not run_logger.is_tracking
    lines = [json.loads(line) for line in (tmp_path / "tracking.jsonl").read_text().splitlines()]
    assert [(x["kind"], x["step"], x["data"]) for x in lines] == [("metrics", 2, {"loss": 1.5}), ("tags", None, {"step": "train"})]


def test_disabled_tracking_logs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    params = make_params(tmp_path, enabled=False)
    with parent_run(params, "pipeline") as parent_id, step_run("train", params) as run_logger:
        assert parent_id is None and isinstance(run_logger, NullLogger)
    assert not (tmp_path / "never.db").exists()


def test_evaluate_tracked_logs_reports_and_registers(store: tuple[str, Path], tmp_path: Path) -> None:
    from wmcore.evaluate.run import evaluate_tracked

    uri, _ = store
    prepared = make_tiny_prepared(tmp_path / "prepared", n_train=1, n_val=3, n_test=3)
    torch.manual_seed(0)
    write_model(tmp_path / "train_dir" / "best.pt")
    params = make_params(tmp_path, registered_model="wm-evaluate-test").model_copy(deep=True)
    params.paths.prepared = str(prepared)
    params.base.threads = 1
    params.evaluate.n_overlay = 2
    metrics = evaluate_tracked(params)
    assert metrics["champion"] is True
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("wm-evaluate-test", CHAMPION_ALIAS)
    run = client.get_run(version.run_id)
    assert run.data.tags["step"] == "evaluate"
    assert run.data.metrics["test/f1"] == pytest.approx(metrics["test"]["f1"])
    assert run.data.metrics["val/n_images"] == 3
    assert all("/" in name for name in run.data.metrics if not name.startswith("system/"))
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/metrics.json", "evaluate/scores.json", "evaluate/pr_curve.png", "evaluate/overlays.png"} <= logged
    test_data = split_fingerprint(prepared, ("test",))
    assert version.tags[TEST_DATA_TAG] == test_data.digest and version.tags["test_images"] == "3"
    assert version.tags["source"] == metrics["source"] == str(tmp_path / "train_dir" / "best.pt")
    assert run.inputs.dataset_inputs[0].dataset.digest == split_fingerprint(prepared).digest
    scores = json.loads((tmp_path / "evaluate_dir" / "scores.json").read_text())
    assert scores["test"]["f1"] == metrics["test"]["f1"] and sum(len(v) for v in scores.values()) <= 12
