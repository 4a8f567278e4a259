"""Deployments on a real local Prefect server carry the schedules and parameters of params.yaml.

Both ways a user registers them are exercised against one server (module fixture): `wm serve
--register-only`, and `prefect deploy --all` from the committed prefect.yaml with a process work
pool, whose screening deployment then runs through `prefect worker start`. The server's scheduler
is off, so only the flow runs a test creates ever run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from flows.deployments import SCREENING, prefect_yaml
from tests.fixtures import make_tiny_checkpoint
from wmcore.config import load_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/server.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # cron runs (real inbox, champion) never start
        "DO_NOT_TRACK": "true",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("prefect server did not start in 120 s:\n" + (home / "server.log").read_text()[-2000:])
    if proc.poll() is not None:
        pytest.fail("prefect server exited:\n" + (home / "server.log").read_text()[-2000:])
    yield api, {**env, "PREFECT_API_URL": api}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_register_deployments_with_schedules(prefect_server):
    api, env = prefect_server
    result = subprocess.run(
        [str(BIN / "wm"), "serve", "--register-only"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) >= {"nightly-retrain", "inbox-screening"}
    params = load_params(ROOT / "params.yaml")
    crons = {name: [s["schedule"]["cron"] for s in d["schedules"]] for name, d in by_name.items()}
    assert crons["nightly-retrain"] == [params.schedule.retrain_cron]
    assert crons["inbox-screening"] == [params.schedule.screening_cron]
    screening = by_name["inbox-screening"]["parameters"]
    assert screening["inbox"] == params.paths.inbox
    assert screening["model"] == params.schedule.screening_model
    assert by_name["nightly-retrain"]["parameters"]["profile"] == "nightly"


def test_wm_serve_stays_quiet_while_it_polls(prefect_server, tmp_path: Path) -> None:
    """`wm serve` prints its banner, then nothing per poll (it used to log each HTTP request)."""
    _, env = prefect_server
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        serve = subprocess.Popen([str(BIN / "wm"), "serve"], cwd=ROOT, env={**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "being served" not in log_path.read_text() and time.monotonic() < deadline:
                assert serve.poll() is None, log_path.read_text()[-2000:]
                time.sleep(0.5)
            banner = log_path.read_text()
            assert "being served" in banner, banner[-2000:]
            time.sleep(5)  # about five polls of the server
            polled = log_path.read_text()
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    assert polled.startswith(banner) and polled[len(banner):].strip() == "" and "HTTP Request" not in polled


def test_prefect_yaml_is_written_from_params_yaml() -> None:
    params = load_params(ROOT / "params.yaml")
    assert (ROOT / "prefect.yaml").read_text(encoding="utf-8") == prefect_yaml(params), (
        "prefect.yaml differs from params.yaml's schedule: run `wm serve --write-prefect-yaml`"
    )


def _prefect(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def test_deploy_all_from_prefect_yaml_and_run_screening_through_a_worker(prefect_server, tmp_path: Path) -> None:
    api, env = prefect_server
    params = load_params(ROOT / "params.yaml")
    pool = params.schedule.work_pool
    _prefect(env, "work-pool", "create", pool, "--type", "process")
    _prefect(env, "deploy", "--all")
    deployments = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()}
    for name, cron in (("nightly-retrain", params.schedule.retrain_cron), (SCREENING, params.schedule.screening_cron)):
        assert deployments[name]["work_pool_name"] == pool
        assert [s["schedule"]["cron"] for s in deployments[name]["schedules"]] == [cron]
    assert deployments[SCREENING]["parameters"]["model"] == params.schedule.screening_model

    inbox, out = tmp_path / "inbox", tmp_path / "screened"
    inbox.mkdir()
    for i in range(2):
        Image.fromarray(np.full((48, 64, 3), 60 * i, np.uint8)).save(inbox / f"photo{i}.png")
    model = make_tiny_checkpoint(tmp_path / "tiny.pt", meta={"threshold": 0.5, "image_threshold": 0.5})
    run = httpx.post(
        f"{api}/deployments/{deployments[SCREENING]['id']}/create_flow_run",
        json={"parameters": {"inbox": str(inbox), "out_dir": str(out), "model": str(model)}},
        timeout=30,
    ).json()
    _prefect(env, "worker", "start", "--pool", pool, "--run-once", "--limit", "1", timeout=500)
    state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=30).json()["state"]
    assert state["type"] == "COMPLETED", state
    rows = (out / "results.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:])
