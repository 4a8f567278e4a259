"""`wm train` under real faults: SIGKILL mid-run then `--resume`, an unreachable MLflow server, an empty split.

The killed run is a real process; the resumed and the uninterrupted runs call the same CLI in
this process (a `wm train` start-up costs ~10 s of imports on 2 cores). The resumed run must end
with exactly the weights and optimizer state of the uninterrupted run (CPU, fixed seed, one
thread). The uninterrupted run logs to an MLflow URI pointing at a closed local port: it must
finish and say where its metrics went instead.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
import torch

from tests.fixtures import make_tiny_prepared
from tests.reliability.wm_process import WmProcess, cli_args, temp_files
from wmcore.cli import main

EPOCHS = 3


def train_sets(prepared: Path, train_dir: Path, cache: Path) -> list[str]:
    """A tiny CPU run: UNet(4, depth 2), 3 epochs of 30 steps of 2 crops of 48 px, one thread."""
    return [
        f"paths.prepared={prepared}", f"paths.train_dir={train_dir}", f"paths.cache_dir={cache}",
        "model.arch=unet", "model.depth=2", "model.base_width=4", "base.seed=0", "base.threads=1", "base.device=cpu",
        f"train.epochs={EPOCHS}", "train.max_minutes=0", "train.crop=48", "train.batch_size=2", "train.progressive=[]",
        "train.steps_per_epoch=30", "train.val_crop=48", "train.val_batch_size=2", "train.val_subset=2",
        "train.log_every=10", "train.warm_start=null", "tracking.system_metrics=false", "tracking.log_model=false",
    ]  # fmt: skip


def closed_port_uri() -> str:
    """An http:// URI of a local port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_tiny_prepared(tmp_path_factory.mktemp("data") / "prepared")


class Collected(logging.Handler):
    """Keeps the formatted records of the loggers it is added to."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prepared) -> tuple[Path, str]:
    """(train_dir, its log) of one whole `wm train` run (in this process) tracking to an unreachable MLflow server."""
    root = tmp_path_factory.mktemp("straight")
    train_dir = root / "train"
    collected = Collected()
    logging.getLogger("wmcore").addHandler(collected)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", closed_port_uri())
            patch.delenv("WMDETECT_PARENT_RUN_ID", raising=False)
            assert main(cli_args("train", sets=train_sets(prepared, train_dir, root / "cache"))) == 0
    finally:
        logging.getLogger("wmcore").removeHandler(collected)
    return train_dir, "\n".join(collected.lines)


def test_unreachable_mlflow_server_the_run_finishes_and_says_where_metrics_went(uninterrupted):
    train_dir, log_text = uninterrupted
    fallback = train_dir / "tracking.jsonl"
    notice = [line for line in log_text.splitlines() if "cannot be used" in line]
    assert len(notice) == 1 and f"logs to {fallback} instead" in notice[0], log_text[-2000:]
    records = [json.loads(line) for line in fallback.read_text().splitlines()]
    assert records[0]["kind"] == "params" and records[0]["data"]["train.epochs"] == EPOCHS
    epochs = [r["data"]["epoch/number"] for r in records if r["kind"] == "metrics" and "epoch/number" in r["data"]]
    assert epochs == [1, 2, 3]
    assert load(train_dir / "last.pt")["epoch"] == EPOCHS


def test_sigkill_mid_run_then_resume_reaches_the_uninterrupted_weights(tmp_path, caplog, prepared, uninterrupted):
    reference_dir, _ = uninterrupted
    train_dir = tmp_path / "train"
    sets = [*train_sets(prepared, train_dir, tmp_path / "cache"), "tracking.enabled=false"]
    run = WmProcess(tmp_path, "train", sets=sets)
    assert run.kill_when(lambda: (train_dir / "last.pt").is_file()), run.stderr[-2000:]
    killed_after = load(train_dir / "last.pt")["epoch"]
    assert 1 <= killed_after < EPOCHS  # killed inside the run, after its first checkpoint

    assert "Traceback" not in run.stderr
    # Had the kill hit a checkpoint write, this is what it would leave: the next save removes it.
    (train_dir / f".last.pt.tmp-{run.proc.pid}").write_bytes(b"PK half a checkpoint")
    with caplog.at_level(logging.INFO, logger="wmcore"):
        assert main(cli_args("train", "--resume", sets=sets)) == 0  # the rerun: in this process, to save a start-up
    assert f"resuming after epoch {killed_after}" in caplog.text
    a, b = load(reference_dir / "last.pt"), load(train_dir / "last.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (EPOCHS, EPOCHS * 30)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    history = json.loads((train_dir / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]  # no epoch twice, none missing
    assert temp_files(train_dir) == []


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_split_stops_training_with_one_clear_line(tmp_path, capsys, split):
    prepared = make_tiny_prepared(tmp_path / "prepared", n_train=2, n_val=1, n_test=1)
    manifest = prepared / "manifest.jsonl"
    rows = [line for line in manifest.read_text().splitlines() if json.loads(line)["split"] != split]
    manifest.write_text("\n".join(rows) + "\n")
    train_dir = tmp_path / "train"
    assert (
        main(cli_args("train", sets=[*train_sets(prepared, train_dir, tmp_path / "cache"), "tracking.enabled=false"]))
        == 2
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"wm train: error: {manifest}: split {split!r} is empty (no rows); rerun `wm prepare` "
                     f"(prepare.n_{split} >= 1, or import shares that send images to it)"]  # fmt: skip
    assert not train_dir.exists()
