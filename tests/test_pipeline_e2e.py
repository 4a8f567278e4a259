"""End to end: the Prefect pipeline flow on a tiny configuration, through DVC, tracked in MLflow.

One test of the whole product as `make run` drives it, in a scratch copy of the project
(git + DVC initialised there), with a tiny params.yaml: a few images, a few steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "base": {"device": "cpu", "threads": 1},
    "prepare": {"n_train": 12, "n_val": 6, "n_test": 6, "min_side": 96, "max_side": 160},
    "model": {"depth": 2, "base_width": 4},
    "train": {
        "epochs": 2,
        "max_minutes": 0,
        "batch_size": 4,
        "crop": 64,
        "progressive": [],
        "val_subset": 6,
        "val_crop": 64,
        "log_every": 1,
        "warm_start": "models/tiny.pt",  # the project's "shipped" model: warm start and promotion both run
    },
    "paths": {"pretrained": "models/tiny.pt"},
    "predict": {"tile_size": 128, "tile_overlap": 16},
}


def _tiny_params() -> dict:
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, values in TINY.items():
        tree[group].update(values)
    return tree


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "wmcore", root / "wmcore", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    # The corpus stage's outputs are committed (a clone never fetches them): so is its dvc.lock entry.
    shutil.copy(ROOT / "dvc.lock", root / "dvc.lock")
    for folder in ("data/corpus", "data/fonts"):
        shutil.copytree(ROOT / folder, root / folder)
    shutil.copy(ROOT / "data" / "corpus.yaml", root / "data" / "corpus.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    shutil.copy(ROOT / "params-tuned.yaml", root / "params-tuned.yaml")  # dvc.yaml lists it (comments only)
    (root / "models").mkdir()
    make_tiny_checkpoint(root / "models" / "tiny.pt", meta={"threshold": 0.5, "image_threshold": 0.5})
    (root / ".gitignore").write_text("mlflow.db\nmlruns/\n.cache/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def pipeline_run(project, prefect_harness):
    from flows.pipeline import pipeline

    old_cwd, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project}/mlflow.db"
    os.chdir(project)
    try:
        result = pipeline(params_file="params.yaml", root=".", profile="e2e")
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return project, result


def test_prepared_data_is_versioned_in_dvc_lock(pipeline_run):
    project, _ = pipeline_run
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"corpus", "prepare", "train", "evaluate", "predict"}
    out = lock["stages"]["prepare"]["outs"][0]
    assert out["path"] == "data/prepared" and out["md5"].endswith(".dir")
    status = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=project, capture_output=True, text=True)
    assert json.loads(status.stdout or "{}") == {}, status.stdout


def test_checkpoint_metrics_and_predictions(pipeline_run):
    project, result = pipeline_run
    assert (project / "results/train/best.pt").stat().st_size > 0
    metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["test"]["f1"] <= 1.0
    assert result["results"]["evaluate"]["test"]["f1"] == metrics["test"]["f1"]
    masks = list((project / "results/predict").rglob("*.mask.png"))
    assert len(masks) == TINY["prepare"]["n_test"]


def test_evaluate_promotes_the_new_model_only_when_it_beats_the_shipped_one(pipeline_run):
    from wmcore.model.checkpoint import load_checkpoint

    project, _ = pipeline_run
    promotion = json.loads((project / "results/evaluate/metrics.json").read_text())["promotion"]
    new_wins = promotion["candidate_test_f1"] > promotion["pretrained_test_f1"]
    assert promotion["promoted"] == ("candidate" if new_wins else "pretrained")
    exported = load_checkpoint(project / "results/evaluate/model.pt")["meta"]["source_checkpoint"]
    assert Path(exported).name == ("best.pt" if new_wins else "tiny.pt")


def test_mlflow_parent_nested_runs_and_registered_model(pipeline_run):
    import mlflow
    from mlflow import MlflowClient

    project, result = pipeline_run
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    parent_id = result["mlflow_run_id"]
    assert parent_id
    exp_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    names = {r.info.run_name for r in children}
    assert {"train", "evaluate"} <= names
    evaluate = next(r for r in children if r.info.run_name == "evaluate")
    assert "test/f1" in evaluate.data.metrics
    assert "train.optimizer.lr" in evaluate.data.params
    versions = client.search_model_versions("name='wmdetect'")
    assert versions
    del mlflow


def test_prefect_summary_artifact(pipeline_run):
    from prefect.artifacts import Artifact

    artifact = Artifact.get("pipeline-summary")
    assert artifact is not None and "test f1" in artifact.data


def test_second_run_skips_unchanged_stages(pipeline_run, prefect_harness):
    from flows.pipeline import pipeline

    project, _ = pipeline_run
    old_cwd = Path.cwd()
    os.chdir(project)
    try:
        again = pipeline(params_file="params.yaml", root=".", profile="e2e-again")
    finally:
        os.chdir(old_cwd)
    assert all("unchanged" in name for name in again["timings"] if name != "total")
