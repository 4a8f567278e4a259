"""Deferred tracking of `wm predict`: records in the spool, sent to MLflow whole, once, or kept."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.fixtures import make_tiny_checkpoint
from wmcore.config import Params, validate
from wmcore.tracking.deferred import (
    COMPLETE_TAG,
    RECORD_TAG,
    deferred_step_run,
    pending_records,
    send_pending,
    spool_dir,
)

REPO = Path(__file__).resolve().parents[1]


def make_params(root: Path, uri: str) -> Params:
    return validate({"paths": {"cache_dir": str(root / "cache")}, "tracking": {"experiment": "deferred", "uri": uri}})


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the record names tracking.uri
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def record_one(params: Params, root: Path) -> Path:
    artifact = root / "summary.json"
    artifact.write_text('{"processed": 3}')
    with deferred_step_run("predict", params, send=False) as run:
        run.log_metrics({"predict/images_per_s": 4.5, "predict/skipped": None})
        run.log_artifact(artifact, artifact_path="predict")
        run.set_tags({"note": "x"})
    artifact.write_text("replaced after the step")  # the record kept its own copy
    (record,) = pending_records(spool_dir(params))
    return record


def runs_of(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("deferred")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_a_record_reaches_mlflow_whole_and_leaves_the_spool(tmp_path: Path, store: str) -> None:
    params = make_params(tmp_path, store)
    record = record_one(params, tmp_path)
    data = json.loads((record / "record.json").read_text())
    assert data["status"] == "FINISHED" and data["end_ms"] >= data["start_ms"] and data["uri"] == store
    assert send_pending(spool_dir(params)) == {"sent": 1, "kept": 0, "busy": 0}
    (run,) = runs_of(store)
    assert run.info.run_name == "predict" and run.info.status == "FINISHED"
    assert (run.info.start_time, run.info.end_time) == (data["start_ms"], data["end_ms"])
    assert run.data.metrics == {"predict/images_per_s": 4.5}
    assert run.data.params == {k: str(v)[:6000] for k, v in params.flat().items()}
    assert {"step": "predict", "note": "x", COMPLETE_TAG: "true"}.items() <= run.data.tags.items()
    client = MlflowClient(tracking_uri=store)
    local = client.download_artifacts(run.info.run_id, "predict/summary.json", str(tmp_path / "down"))
    assert Path(local).read_text() == '{"processed": 3}'
    assert pending_records(spool_dir(params)) == []


def test_sending_twice_or_after_a_killed_sender_makes_one_complete_run(tmp_path: Path, store: str) -> None:
    params = make_params(tmp_path, store)
    record = record_one(params, tmp_path)
    shutil.copytree(record, tmp_path / "copy")
    send_pending(spool_dir(params))
    shutil.copytree(tmp_path / "copy", record)  # the same record again (a sender killed before deleting it)
    assert send_pending(spool_dir(params))["sent"] == 1
    assert len(runs_of(store)) == 1
    # a sender killed mid-way left an incomplete run of a new record: it is replaced
    second = record_one(params, tmp_path)
    record_id = json.loads((second / "record.json").read_text())["record_id"]
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.get_experiment_by_name("deferred").experiment_id
    client.create_run(experiment_id, tags={RECORD_TAG: record_id}, run_name="predict")
    send_pending(spool_dir(params))
    runs = [r for r in runs_of(store) if r.data.tags.get(RECORD_TAG) == record_id]
    assert len(runs) == 1 and runs[0].data.tags[COMPLETE_TAG] == "true"


def test_a_store_that_fails_keeps_the_record_for_the_next_sender(tmp_path: Path, store: str) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder should be")
    params = make_params(tmp_path, f"sqlite:///{blocked / 'mlflow.db'}")
    record = record_one(params, tmp_path)
    assert send_pending(spool_dir(params)) == {"sent": 0, "kept": 1, "busy": 0}
    assert pending_records(spool_dir(params)) == [record]
    data = json.loads((record / "record.json").read_text())
    data["uri"] = store  # the store is back (here: moved); the next sender delivers
    (record / "record.json").write_text(json.dumps(data))
    assert send_pending(spool_dir(params))["sent"] == 1 and len(runs_of(store)) == 1


def test_a_failed_step_is_recorded_failed(tmp_path: Path, store: str) -> None:
    params = make_params(tmp_path, store)
    with pytest.raises(RuntimeError), deferred_step_run("predict", params, send=False):
        raise RuntimeError("boom")
    (record,) = pending_records(spool_dir(params))
    assert json.loads((record / "record.json").read_text())["status"] == "FAILED"


def test_wm_predict_does_not_load_mlflow_and_its_run_arrives(tmp_path: Path, store: str) -> None:
    model = make_tiny_checkpoint(tmp_path / "tiny.pt", meta={"threshold": 0.5, "image_threshold": 0.5})
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    argv = ["--params", str(REPO / "params.yaml"), "-S", f"tracking.uri={store}", "-S", "tracking.experiment=deferred",
            "-S", f"paths.cache_dir={tmp_path / 'cache'}", "-S", "base.threads=1",
            "predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--model", str(model)]  # fmt: skip
    code = (f"import sys; from wmcore.cli import main; code = main({argv!r}); "
            "assert 'mlflow' not in sys.modules, 'mlflow was imported'; sys.exit(code)")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "WMDETECT_PARENT_RUN_ID")}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=300)
    send_pending(tmp_path / "cache" / "tracking-spool", wait=True)  # waits for the detached sender, sends leftovers
    (run,) = runs_of(store)
    assert run.info.status == "FINISHED" and run.data.metrics["predict/processed"] == 1.0


def test_a_spool_that_cannot_be_written_logs_the_run_inline(tmp_path: Path, store: str) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    params = make_params(tmp_path, store)
    with deferred_step_run("predict", params, send=False) as run:
        run.log_metrics({"predict/images_per_s": 2.0})
    (inline,) = runs_of(store)
    assert inline.info.status == "FINISHED" and inline.data.metrics == {"predict/images_per_s": 2.0}
