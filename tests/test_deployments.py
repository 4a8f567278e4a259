"""Deployments registered with a real local Prefect server carry the schedules and parameters of params.yaml."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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
