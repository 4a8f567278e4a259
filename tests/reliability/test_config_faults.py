"""Bad configuration fails fast: every `wm` command stops before any work with one line naming the key.

Each case runs each command that does work (prepare, train, evaluate, predict, screen, run); none
may create its output folder, start a flow or load a model. The messages name the key and what is
allowed (the valid choices, the bound, or the known keys with the closest one suggested).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.reliability.wm_process import REPO_PARAMS, assert_no_traceback, cli_args, run_wm
from wmcore.cli import main
from wmcore.config import TrainParams

COMMANDS = {
    "prepare": ("prepare",),
    "train": ("train",),
    "evaluate": ("evaluate",),
    "predict": ("predict", "{inbox}", "--out", "{out}/predict"),
    "screen": ("screen", "{inbox}", "--out", "{out}/screen"),
    "run": ("run",),
}
CASES = {
    "unknown key in the file": ((), "train.epohcs: unknown key (typo?); did you mean 'epochs'? allowed: epochs,"),
    "override typo": (("trian.epochs=3",), "trian: unknown key (typo?); did you mean 'train'? allowed: base, paths,"),
    "override key typo": (("predict.tile_sise=64",), "predict.tile_sise: unknown key (typo?); did you mean 'tile_size'?"),
    "wrong type": (("train.batch_size=four",), "train.batch_size: Input should be a valid integer"),
    "out of range": (("predict.tile_overlap=-5",), "predict.tile_overlap: Input should be greater than or equal to 0"),
    "not an allowed value": (("base.device=gpu",), "base.device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')"),
    "cross-field rule": (("predict.tile_size=64", "predict.tile_overlap=40"), "tile_overlap (40) must be < tile_size/2 (32)"),
}


def output_sets(out: Path) -> list[str]:
    """Every output folder of every command under `out`."""
    return [f"paths.{key}={out / key}" for key in ("prepared", "train_dir", "evaluate_dir", "predict_dir", "cache_dir")] + [
        f"schedule.screening_out={out / 'screening_out'}"
    ]


def params_with_typo(tmp_path: Path) -> Path:
    """A copy of the project params.yaml with `train.epohcs` (a typo of epochs) added."""
    tree = yaml.safe_load(REPO_PARAMS.read_text())
    tree["train"]["epohcs"] = 3
    path = tmp_path / "params-typo.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_config_stops_every_command_before_any_work(tmp_path, capsys, monkeypatch, command, case):
    monkeypatch.chdir(tmp_path)  # relative defaults (results/, mlflow.db) would land here, and are checked
    out, inbox = tmp_path / "out", tmp_path / "inbox"
    inbox.mkdir()
    bad_sets, message = CASES[case]
    args = [a.format(inbox=inbox, out=out) for a in COMMANDS[command]]
    argv = cli_args(*args, sets=[*output_sets(out), *bad_sets])
    if case == "unknown key in the file":
        argv[1] = str(params_with_typo(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wm {command}: error: ") and message in err[0], err
    assert not out.exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"inbox", "params-typo.yaml"}  # nothing else was created


def test_a_typo_in_a_real_process_is_one_line_no_traceback(tmp_path):
    done = run_wm(tmp_path, "train", sets=[*output_sets(tmp_path / "out"), "train.epohcs=3"])
    assert done.returncode == 2
    assert_no_traceback(done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"wm train: error: {REPO_PARAMS} + overrides: train.epohcs: unknown key (typo?); did you mean 'epochs'? "
        f"allowed: {', '.join(TrainParams.model_fields)} (got 3)"
    ]
    assert not (tmp_path / "out").exists()
