"""What `wm` prints for a person: no HTTP log lines, a stage's summary table instead of a JSON line (unless -v)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from tests.fixtures import evaluate_params, write_random_checkpoint
from wmcore.cli import CHATTY_LOGGERS, configure_logging, main


@pytest.fixture
def restore_logger_levels():
    saved = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restore_logger_levels")
def test_http_request_lines_only_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PREFECT_LOGGING_LEVEL", "MLFLOW_LOGGING_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    configure_logging(0)
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)  # "HTTP Request: POST ..." per API call
    assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "INFO")  # a user's own setting is kept
    configure_logging(0)
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "INFO"
    configure_logging(1)
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    configure_logging(2)
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)


def test_evaluate_prints_its_summary_and_where_outputs_went(tmp_path: Path, tiny_prepared: Path, capsys) -> None:
    write_random_checkpoint(tmp_path / "train" / "best.pt")
    params = evaluate_params(tmp_path, tiny_prepared)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    assert main(["--params", str(params_file), "evaluate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "val", "test"] and any(line.startswith("f1 ") for line in lines)
    assert lines[-1].startswith(f"-> {tmp_path / 'evaluate'}/ (model.pt, metrics.json, scores.json")
    assert not any(line.startswith("{") for line in lines) and max(map(len, lines)) < 160
    assert main(["--params", str(params_file), "-v", "evaluate"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith('{"precision": ')  # -v: the full result too


@pytest.mark.parametrize(
    ("sets", "first"),
    [(["model.arch=text_unet", "model.width=16", "model.edge=4"], "text_unet: width=16 edge=4"),
     (["model.arch=unet", "model.base_width=4", "model.depth=2"], "unet: base_width=4 depth=2")],
)  # fmt: skip
def test_model_info_names_the_architecture_it_counts(sets: list[str], first: str, capsys) -> None:
    args = [a for s in sets for a in ("-S", s)]
    assert main([*args, "-S", "tracking.enabled=false", "model-info", "--size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == first and lines[1].startswith("parameters: ") and lines[2].startswith("GFLOPs per 64x64")


def test_a_prefect_server_that_does_not_start_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """`wm run` whose ephemeral Prefect server misses its start-up time: one error line naming the setting, exit 2."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "wmcore.cli", "run"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in done.stderr and "Nothing ran" in done.stderr


def test_the_prefect_server_gets_more_start_up_time_unless_the_user_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    monkeypatch.delenv(key, raising=False)
    configure_logging(0)
    assert int(os.environ[key]) >= 60  # Prefect's own default is 20
    monkeypatch.setenv(key, "7")
    configure_logging(0)
    assert os.environ[key] == "7"
