"""End to end: the Prefect pipeline flow on a tiny configuration, through DVC, tracked in MLflow.

One test of the whole product as `make run` drives it, in a scratch copy of the project
(git + DVC initialised there), with a tiny params.yaml: a few images, a few steps. The second run
is `wm run` itself, as `make run` starts it: every stage is up to date, so it must print no HTTP
log lines, say each stage is unchanged once, and open no MLflow run.
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
    "model": {"arch": "unet", "depth": 2, "base_width": 4},
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
    for folder in ("data/corpus", "data/corpus-native", "data/corpus-native-train", "data/fonts"):
        shutil.copytree(ROOT / folder, root / folder)
    shutil.copy(ROOT / "data" / "corpus.yaml", root / "data" / "corpus.yaml")
    for name in ("hard_negatives.jsonl", "hard_negatives.summary.json"):
        shutil.copy(ROOT / "data" / name, root / "data" / name)
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    shutil.copy(ROOT / "params-tuned.yaml", root / "params-tuned.yaml")  # dvc.yaml lists it (comments only)
    (root / "models").mkdir()
    make_tiny_checkpoint(root / "models" / "tiny.pt", meta={"threshold": 0.5, "image_threshold": 0.5})
    (root / ".gitignore").write_text("mlflow.db\nmlruns/\n.cache/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=root, check=True)
    # The corpus stages' code deps are this checkout's modules: record them as they are here (its outputs,
    # copied above, are what it would build), as a clone whose dvc.lock is up to date has them.
    # The same for the hard negatives the shipped model mined (mining 795 photos again would only slow the test).
    subprocess.run([str(BIN / "dvc"), "commit", "-f", "-q", "corpus", "corpus_native", "corpus_native_train",
                    "mine"], cwd=root, check=True)
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
    assert set(lock["stages"]) == {"corpus", "corpus_native", "corpus_native_train", "mine", "prepare", "train",
                                   "evaluate", "predict"}  # fmt: skip
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
    new, old = ({"test_f1": promotion[f"{who}_test_f1"], "heldout_f1": promotion[f"{who}_test_heldout_f1"],
                 "real_fp_area": promotion[f"{who}_real_test_fp_area"]} for who in ("candidate", "pretrained"))  # fmt: skip
    new_wins = (new["test_f1"] > old["test_f1"] and (new["heldout_f1"] is None or old["heldout_f1"] is None
                or new["heldout_f1"] >= old["heldout_f1"]) and (new["real_fp_area"] is None
                or old["real_fp_area"] is None or new["real_fp_area"] <= old["real_fp_area"]))  # fmt: skip
    assert promotion["promoted"] == ("candidate" if new_wins else "pretrained")
    assert (promotion["reason"] is None) == new_wins
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
    runs = {r.info.run_name: r for r in children}
    assert sorted(runs) == ["evaluate", "predict", "prepare", "train"]
    expected = {"prepare": "prepare/n_train", "train": "train/loss", "evaluate": "test/f1",
                "predict": "predict/images_per_s"}  # fmt: skip
    for name, run in runs.items():
        assert expected[name] in run.data.metrics
        assert all("/" in metric for metric in run.data.metrics), (name, sorted(run.data.metrics))
    assert {"val/f1", "val/loss", "train_summary/best_val_f1"} <= set(runs["train"].data.metrics)
    assert "train.optimizer.lr" in runs["evaluate"].data.params
    parent = client.get_run(parent_id)
    assert {"test/f1", "real_test/fp_area", "train/images_per_s", "predict/images_per_s",
            "system/peak_mem_mb"} <= set(parent.data.metrics)  # fmt: skip
    assert parent.data.metrics["test/f1"] == runs["evaluate"].data.metrics["test/f1"]
    digests = {r.inputs.dataset_inputs[0].dataset.digest for r in (parent, runs["prepare"], runs["train"])}
    assert len(digests) == 1  # one prepared dataset, seen by every step
    (version,) = client.search_model_versions("name='wmdetect'")
    assert version.tags["promoted"] in ("candidate", "pretrained") and version.tags["test_images"] == "6"
    del mlflow


def test_prefect_summary_artifact(pipeline_run):
    from prefect.artifacts import Artifact

    artifact = Artifact.get("pipeline-summary")
    assert artifact is not None and "test f1" in artifact.data


def test_second_run_is_quiet_skips_every_stage_and_opens_no_mlflow_run(pipeline_run, tmp_path):
    from mlflow import MlflowClient

    project, _ = pipeline_run
    uri = f"sqlite:///{project}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("wmdetect").experiment_id
    runs_before = len(client.search_runs([experiment]))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PREFECT_HOME": str(tmp_path / "prefect")}
    for name in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "MLFLOW_LOGGING_LEVEL", "WMDETECT_VERBOSITY"):
        env.pop(name, None)
    result = subprocess.run([str(BIN / "wm"), "run"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "HTTP Request" not in output and " INFO " not in output, output[-3000:]
    for stage in ("prepare", "train", "evaluate", "predict"):
        assert output.count(f"Stage '{stage}' didn't change, skipping") == 1, output[-3000:]
    assert "mlflow run | none (every stage up to date)" in " ".join(output.split())
    assert len(client.search_runs([experiment])) == runs_before
