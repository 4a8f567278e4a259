"""Inbox screening: every image processed exactly once across reruns, concurrent claimers and Dask workers."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.screening import run_screening, screening, screening_for
from wmcore.cli import main
from wmcore.config import load_params
from wmcore.errors import WmError
from wmcore.infer.inputs import discover_inputs
from wmcore.infer.screening import CLAIMS, MANIFEST, ProcessedManifest
from wmcore.runtime import dask_workers
from wmcore.runtime.dask_workers import check_scheduler, params_for_this_process, thread_share
from wmcore.runtime.device import available_cores

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
N_IMAGES = 8


pytestmark = pytest.mark.usefixtures("fresh_predictor_cache")


@pytest.fixture
def inbox(tmp_path) -> Path:
    """8 random images; one (100 px) is larger than the 64 px tile, so the tiled path runs too."""
    root = tmp_path / "inbox"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        h, w = (100, 72) if i == 3 else (40 + 4 * i, 48)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def overrides(tmp_path: Path) -> list[str]:
    # One torch thread everywhere: the local and the Dask run compute with the same thread count.
    return [f"paths.cache_dir={tmp_path / 'cache'}", "predict.tile_size=64", "predict.tile_overlap=8",
            "base.threads=1", "distributed.threads_per_worker=1", "predict.save_probability=true"]  # fmt: skip


def manifest_keys(out: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (out / MANIFEST).read_text().splitlines()]


# --------------------------------------------------------------------------- thread sizing and runner choice


@pytest.mark.parametrize(
    ("cores", "processes", "requested", "expected"),
    [(2, 2, 0, 1), (16, 2, 0, 8), (16, 3, 0, 5), (2, 4, 0, 1), (8, 1, 0, 8), (2, 2, 3, 3)],
)
def test_thread_share_splits_host_cores_between_worker_processes(cores, processes, requested, expected):
    assert thread_share(cores, processes, requested) == expected


def test_params_unchanged_outside_a_dask_worker():
    params = load_params(REPO_PARAMS, overrides=["base.threads=3"])
    assert params_for_this_process(params) is params


def test_a_dask_worker_takes_its_share_of_the_host_cores(monkeypatch):
    from distributed import Client, LocalCluster

    monkeypatch.setattr(dask_workers, "_share", None)  # sized once per process: start unsized
    before = torch.get_num_threads()
    params = load_params(REPO_PARAMS, overrides=["base.threads=0", "distributed.threads_per_worker=0"])
    try:  # in-process workers (threads): the sizing code runs as in a worker process, without spawn costs
        with LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
            sized = client.submit(params_for_this_process, params).result()
            assert check_scheduler(cluster.scheduler_address, 10) == 2
    finally:
        torch.set_num_threads(before)
    assert sized.base.threads == max(1, available_cores() // 2)
    assert params.base.threads == 0  # the caller's params are not modified


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    with pytest.raises(WmError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1 within 0.5 s"):
        check_scheduler("tcp://127.0.0.1:1", 0.5)
    sets = ["-S", "distributed.connect_timeout_s=0.5"]
    assert (
        main(["--params", str(REPO_PARAMS), *sets, "screen", str(tmp_path), "--dask-address", "tcp://127.0.0.1:1"]) == 2
    )


def test_runner_choice_and_bad_combinations():
    params = load_params(REPO_PARAMS)
    assert screening_for(params) is screening  # params.yaml default: local
    dask_flow = screening_for(params, workers=3)
    assert type(dask_flow.task_runner).__name__ == "DaskTaskRunner"
    assert dask_flow.task_runner.cluster_kwargs["n_workers"] == 3
    assert screening_for(params, address="tcp://127.0.0.1:8786").task_runner.address == "tcp://127.0.0.1:8786"
    with pytest.raises(WmError, match="dask runner only"):
        screening_for(params, runner="local", workers=2)
    with pytest.raises(WmError, match="pick one"):
        screening_for(params, workers=2, address="tcp://127.0.0.1:8786")


@pytest.mark.parametrize(
    "args",
    [["--runner", "local", "--workers", "2"], ["--workers", "2", "--dask-address", "tcp://127.0.0.1:8786"],
     ["--workers", "0"], ["--chunk", "0"]],
)  # fmt: skip
def test_cli_refuses_bad_runner_options_with_exit_code_2(tmp_path, args):
    # No capsys: main() installs a logging handler on the stderr of the moment, which capsys would close.
    assert main(["--params", str(REPO_PARAMS), "screen", str(tmp_path), *args]) == 2


# --------------------------------------------------------------------------- claims under concurrency


# Runs in a fresh interpreter (only the manifest's light imports): says it is ready, waits for the
# go file, then claims chunks of 2 and records them as done until nothing is left.
CLAIMER = """
import json, sys, time
from pathlib import Path
from wmcore.infer.inputs import InputImage
from wmcore.infer.screening import ProcessedManifest, image_key

out, ready, go, paths = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
manifest = ProcessedManifest(out)
items = [InputImage(Path(p), Path(p).name) for p in paths]
ready.touch()
while not go.exists():
    time.sleep(0.002)
mine = []
while chunk := manifest.claim(items, 2):
    time.sleep(0.05)  # "work": the other process claims meanwhile (even on a loaded machine)
    manifest.record([{"key": image_key(i), "name": i.name} for i in chunk])
    mine += [i.name for i in chunk]
print(json.dumps(mine))
"""


def test_two_processes_claiming_the_same_list_never_overlap(tmp_path):
    (tmp_path / "inbox").mkdir()
    paths = []
    for i in range(24):
        path = tmp_path / "inbox" / f"f{i:02d}.png"
        path.write_bytes(b"x" * (i + 1))
        paths.append(str(path))
    go, out = tmp_path / "go", tmp_path / "out"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(out), str(tmp_path / f"ready{n}"), str(go), *paths],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for n in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{n}").exists() for n in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both are ready: they start claiming together
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert set(claimed[0]).isdisjoint(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(Path(p).name for p in paths)
    assert claimed[0] and claimed[1], claimed  # both really took part
    keys = manifest_keys(out)
    assert len(keys) == len(set(keys)) == len(paths)
    assert json.loads((out / "claims.json").read_text()) == {}


# --------------------------------------------------------------------------- the flow


def test_second_screening_processes_nothing_and_a_replaced_image_is_redone(
    tmp_path, checkpoint, inbox, prefect_harness
):
    out = tmp_path / "out"
    argv = ["--params", str(REPO_PARAMS)] + [a for o in overrides(tmp_path) for a in ("-S", o)]
    assert main([*argv, "screen", str(inbox), "--out", str(out), "--model", str(checkpoint), "--chunk", "3"]) == 0
    assert len(manifest_keys(out)) == N_IMAGES
    again = run_screening(str(inbox), str(out), str(checkpoint), str(REPO_PARAMS), chunk_size=3,
                          overrides=overrides(tmp_path))  # fmt: skip
    assert again["screened"] == 0
    Image.new("RGB", (30, 30), (9, 9, 9)).save(inbox / "img5.png")  # same name, new content
    os.utime(inbox / "img5.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    third = run_screening(str(inbox), str(out), str(checkpoint), str(REPO_PARAMS), overrides=overrides(tmp_path))
    assert [r["name"] for r in third["rows"]] == ["img5.png"]
    assert len(manifest_keys(out)) == N_IMAGES + 1


def test_a_failed_chunk_releases_its_claims_and_the_next_run_screens_them(tmp_path, checkpoint, inbox, prefect_harness):
    out = tmp_path / "out"
    common = {"params_file": str(REPO_PARAMS), "chunk_size": 3, "overrides": overrides(tmp_path)}
    with pytest.raises(WmError, match="not found"):
        run_screening(str(inbox), str(out), str(tmp_path / "missing.pt"), **common)
    assert json.loads((out / "claims.json").read_text()) == {}
    assert run_screening(str(inbox), str(out), str(checkpoint), **common)["screened"] == N_IMAGES


def test_a_claim_failing_mid_run_fails_the_run_with_its_one_line_error(
    tmp_path, checkpoint, inbox, prefect_harness, monkeypatch
):
    # The second claim meets an output folder turned read-only (as CI once hit by chance in the
    # reliability suite): the run must end with the claim's own error, the first chunk kept.
    real_claim, calls = ProcessedManifest.claim, []

    def claim(self, items, limit):
        calls.append(limit)
        if len(calls) == 2:
            with self._locked():  # the real conversion of the OSError into the user's error
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.out / CLAIMS))
        return real_claim(self, items, limit)

    monkeypatch.setattr(ProcessedManifest, "claim", claim)
    out = tmp_path / "out"
    with pytest.raises(WmError, match=r"cannot write to .*out: Read-only file system \(claims.json\)"):
        run_screening(str(inbox), str(out), str(checkpoint), str(REPO_PARAMS), chunk_size=3,
                      overrides=overrides(tmp_path))  # fmt: skip
    assert len(calls) == 2
    assert len(manifest_keys(out)) == 3  # the chunk claimed before the failure finished and was recorded


def test_dask_local_cluster_screens_each_image_once_like_the_local_runner(tmp_path, checkpoint, inbox, prefect_harness):
    local_out, dask_out = tmp_path / "local", tmp_path / "dask"
    common = {"model": str(checkpoint), "params_file": str(REPO_PARAMS), "overrides": overrides(tmp_path)}
    local = run_screening(str(inbox), str(local_out), chunk_size=N_IMAGES, **common)
    dask = run_screening(str(inbox), str(dask_out), runner="dask", workers=2, chunk_size=2, **common)

    names = sorted(i.name for i in discover_inputs([str(inbox)])[0])
    assert sorted(r["name"] for r in dask["rows"]) == names  # every image, each exactly once
    assert len(manifest_keys(dask_out)) == len(set(manifest_keys(dask_out))) == N_IMAGES
    table = [json.loads(line)["name"] for line in (dask_out / "results.jsonl").read_text().splitlines()]
    assert sorted(table) == names
    by_name = {r["name"]: r for r in local["rows"]}
    for row in dask["rows"]:
        assert row["status"] == "ok"
        ref = by_name[row["name"]]
        assert (row["score"], row["area_fraction"], row["boxes"]) == (ref["score"], ref["area_fraction"], ref["boxes"])
        for kind in ("mask", "prob"):
            produced = (dask_out / f"{row['name']}.{kind}.png").read_bytes()
            assert produced == (local_out / f"{row['name']}.{kind}.png").read_bytes(), (row["name"], kind)
