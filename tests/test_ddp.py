"""DDP training: 2 gloo ranks on CPU train like one process with the same global batch.

The two end-to-end tests start real torchrun jobs (2 processes, 1 thread each) on a tiny
prepared dataset and a tiny UNet; the others check the pieces in this process (a one-rank
gloo group where a process group is needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from torch import nn

import wmcore.train.distributed as ddp
from tests.fixtures import make_tiny_prepared
from wmcore import cli
from wmcore.config import ConfigError, load_params
from wmcore.errors import WmError
from wmcore.model import build_model
from wmcore.train.loop import run_training

TRAIN_OUTPUTS = {"best.pt", "last.pt", "history.json", "train_summary.json", "metrics.json", "loss_curve.png"}


def write_params(tmp_path: Path, name: str, **train) -> Path:
    """Params file for a tiny run: micro-batch 1 per rank x 2 accumulation, 2 epochs of 8 images, crop 32."""
    tree = {
        "base": {"seed": 0, "threads": 1, "device": "cpu"},
        "paths": {
            "prepared": str(tmp_path / "prepared"),
            "train_dir": str(tmp_path / name),
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"arch": "unet", "depth": 2, "base_width": 4},
        "train": {
            "epochs": 2,
            "max_minutes": 0,
            "crop": 32,
            "batch_size": 1,
            "grad_accum_steps": 2,
            "progressive": [],
            "log_every": 1,
            "val_crop": 48,
            "val_batch_size": 2,
            "val_subset": 4,
            **train,
        },
        "tracking": {"system_metrics": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def run_job(cmd: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run a training command in a fresh environment; returns the process and the summaries it printed."""
    foreign = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "WMDETECT_PARENT_RUN_ID")  # this job's own, not the caller's
    env = {k: v for k, v in os.environ.items() if k not in foreign}
    env.update(
        OMP_NUM_THREADS="1",
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# --------------------------------------------------------------------------- end to end (torchrun)


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    make_tiny_prepared(tmp_path / "prepared")
    params_file = write_params(tmp_path, "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    _, summaries = run_job([*cmd, "-m", "wmcore.cli", "--params", str(params_file), "-v", "train"], tmp_path)  # -v: JSON too

    # One process, micro-batch 2 = both ranks' micro-batches of 1: the same global batch of 2 x 2.
    single = load_params(
        params_file,
        overrides=["train.batch_size=2", f"paths.train_dir={tmp_path / 'single'}", "tracking.enabled=false"],
    )
    reference = run_training(single)

    assert len(summaries) == 1  # only rank 0 reports
    summary = summaries[0]
    assert (summary["world_size"], summary["torch_threads"], summary["steps"], reference["steps"]) == (2, 1, 4, 4)
    ddp_weights, one_weights = weights(tmp_path / "ddp" / "last.pt"), weights(tmp_path / "single" / "last.pt")
    assert ddp_weights.keys() == one_weights.keys()
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(tensor, one_weights[name], atol=1e-5, rtol=0, msg=name)
    ddp_losses = [s["loss"] for s in json.loads((tmp_path / "ddp" / "history.json").read_text())["steps"]]
    one_losses = [s["loss"] for s in json.loads((tmp_path / "single" / "history.json").read_text())["steps"]]
    assert ddp_losses == pytest.approx(one_losses, abs=1e-5)
    assert summary["best_val_f1"] == pytest.approx(reference["best_val_f1"], abs=1e-3)

    # Rank 0 alone wrote: one set of outputs and checkpoints, one MLflow run.
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == TRAIN_OUTPUTS
    checkpoints = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pt"))
    assert checkpoints == ["ddp/best.pt", "ddp/last.pt", "single/best.pt", "single/last.pt"]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("wmdetect").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("train", "FINISHED")]
    assert runs[0].data.metrics["train_summary/steps"] == 4


def test_wm_train_relaunches_as_ranks_that_stop_together_on_the_time_budget(tmp_path):
    make_tiny_prepared(tmp_path / "prepared")
    # No torchrun here: train.nproc = 2 makes the command start its own 2 ranks. Ranks whose clocks
    # disagreed would stop at different steps and leave the other waiting in an all-reduce (timeout).
    params_file = write_params(
        tmp_path, "budget", nproc=2, sync_batchnorm=False, max_minutes=0.01, epochs=500, val_every=5
    )
    _, summaries = run_job([sys.executable, "-m", "wmcore.cli", "--params", str(params_file), "-v", "train"], tmp_path)
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary["world_size"] == 2 and summary["stop_reason"] == "time budget"
    assert 1 <= summary["epochs"] < 500
    history = json.loads((tmp_path / "budget" / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == list(range(1, summary["epochs"] + 1))
    assert history["epochs"][-1]["val_f1"] is not None  # the last epoch is validated (on both ranks' shares)


# --------------------------------------------------------------------------- pieces, in this process


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of this process alone (collectives work, world size 1)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("split", [(3,), (1, 2), (2, 5, 1)])
def test_merge_moments_equals_the_moments_of_the_whole(split):
    torch.manual_seed(0)
    data = torch.randn(sum(split), 3, dtype=torch.float64) * 4 + 100  # a large mean: cancellation-prone
    parts = data.split(list(split))
    means = torch.stack([p.mean(0) for p in parts])
    variances = torch.stack([p.var(0, correction=0) for p in parts])
    counts = torch.tensor([[float(len(p))] for p in parts], dtype=torch.float64)
    mean, var, total = ddp.merge_moments(means, variances, counts)
    torch.testing.assert_close(mean, data.mean(0))
    torch.testing.assert_close(var, data.var(0, correction=0))
    assert float(total) == sum(split)


def test_global_batchnorm_matches_batchnorm2d_forward_backward_and_running_stats(one_rank_group):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(5)
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    converted = ddp.convert_batchnorm(nn.Sequential(nn.BatchNorm2d(5)), torch.device("cpu"))[0]
    converted.load_state_dict(plain.state_dict())
    x = (torch.randn(3, 5, 6, 7) * 2 + 3).to(memory_format=torch.channels_last)
    grad = torch.randn(3, 5, 6, 7)
    outputs = []
    for module, forward in ((plain, plain), (converted, converted._global_forward)):  # all-rank path, forced
        xi = x.clone().requires_grad_()
        y = forward(xi)
        (y * grad).sum().backward()
        outputs.append((y.detach(), xi.grad, module.weight.grad, module.bias.grad))
    for got, want in zip(outputs[1], outputs[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(converted.running_mean, plain.running_mean)
    torch.testing.assert_close(converted.running_var, plain.running_var)
    assert int(converted.num_batches_tracked) == int(plain.num_batches_tracked) == 1


def test_convert_batchnorm_keeps_parameters_state_keys_and_eval_outputs():
    model = build_model(base_width=4, depth=2)
    optimizer = torch.optim.AdamW(model.parameters())
    keys, params = list(model.state_dict()), {id(p) for p in model.parameters()}
    x = torch.rand(2, 3, 20, 24)
    before = model.eval()(x)
    converted = ddp.convert_batchnorm(model, torch.device("cpu"))
    assert converted is model and list(model.state_dict()) == keys
    assert {id(p) for p in model.parameters()} == params == {id(p) for g in optimizer.param_groups for p in g["params"]}
    norms = [type(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and set(norms) == {ddp.GlobalBatchNorm2d}
    torch.testing.assert_close(model(x), before, atol=0, rtol=0)  # eval mode: plain BatchNorm2d


@pytest.mark.parametrize(
    ("cores", "local_world", "requested", "workers", "expected"),
    [(2, 1, 0, 0, 2), (2, 2, 0, 0, 1), (16, 4, 0, 0, 4), (3, 2, 0, 0, 1), (1, 4, 0, 0, 1), (16, 4, 3, 0, 3),
     (16, 1, 0, 12, 4), (16, 2, 0, 6, 2), (2, 1, 0, 2, 1), (16, 1, 5, 12, 5)],  # loader workers take cores too
)  # fmt: skip
def test_threads_per_rank_split_the_free_cores(monkeypatch, cores, local_world, requested, workers, expected):
    monkeypatch.setattr(ddp, "available_cores", lambda: cores)
    monkeypatch.setattr("wmcore.runtime.device.available_cores", lambda: cores)
    before = torch.get_num_threads()
    try:
        assert ddp.threads_per_rank(requested, ddp.RankInfo(0, 0, local_world, local_world), workers) == expected
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ddp.RankInfo(0, 0, 1, 1)),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, ddp.RankInfo(3, 1, 4, 2)),
        ({"RANK": "1", "WORLD_SIZE": "2"}, ddp.RankInfo(1, 1, 2, 2)),
    ],
)
def test_rank_info_reads_the_torchrun_environment(monkeypatch, env, expected):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert ddp.rank_info() == expected
    assert ddp.under_torchrun() == bool(env)


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_rank_info_refuses_an_impossible_layout(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(WmError, match="RANK"):
        ddp.rank_info()


def test_training_with_world_size_2_but_no_process_group_is_a_clear_error(tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    params = load_params(write_params(tmp_path, "nogroup"), overrides=[f"paths.prepared={tiny_prepared}"])
    with pytest.raises(WmError, match="no process group"):
        run_training(params)


def test_wm_train_with_nproc_relaunches_through_torchrun(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    launched = []
    monkeypatch.setattr(ddp, "launch_local_ranks", lambda nproc, argv: launched.append((nproc, argv)) or 7)
    params_file = write_params(tmp_path, "relaunch")
    code = cli.main(["--params", str(params_file), "-S", "train.nproc=3", "-S", "train.epochs=1", "train", "--resume"])
    # Each rank runs `python -m wmcore.cli` with the same `wm train` command line.
    expected = ["--params", str(params_file), "-S", "train.nproc=3", "-S", "train.epochs=1", "train", "--resume"]
    assert code == 7 and launched == [(3, expected)]
    assert cli.build_parser().parse_args(expected).handler == "wmcore.commands.train"


def test_train_nproc_and_sync_batchnorm_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="train.nproc"):
        load_params(write_params(tmp_path, "bad"), overrides=["train.nproc=0"])
    assert load_params(write_params(tmp_path, "good")).train.sync_batchnorm is True


def test_validation_needs_an_image_per_rank(tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setattr("wmcore.train.setup.distributed_rank", lambda: (0, 4))
    from wmcore.train.setup import build_data, resolve_switches

    params = load_params(
        write_params(tmp_path, "few"), overrides=[f"paths.prepared={tiny_prepared}", "train.val_subset=3"]
    )
    with pytest.raises(WmError, match="3 validation image"):
        build_data(params, resolve_switches(params, torch.device("cpu")), torch.device("cpu"))


def test_sum_across_ranks_and_agree_are_identity_for_one_process():
    t = torch.tensor([1, 2, 3])
    assert ddp.sum_across_ranks(t) is t and t.tolist() == [1, 2, 3]
    assert ddp.agree("early stop") == "early stop"
