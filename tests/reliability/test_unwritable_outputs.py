"""Output folders that cannot be written: before any work, and turning read-only mid-run.

Every command that writes (`wm predict`, `screen`, `evaluate`, `train`, `prepare`) must end
with exactly one line "wm CMD: error: cannot write to FOLDER: REASON; choose another OPTION"
and exit code 4, before it loads a model or starts a flow; no traceback. A folder that turns
read-only mid-run ends the run the same way, with every finished image and every row written so
far intact, and a rerun (writable again) completes the rest.

The folder is made unwritable for real (tests/reliability/read_only.py): an immutable attribute
(chattr +i, the issue's EPERM), a read-only bind mount (EROFS), or mode 0555 with the `wm`
process run without root's permission override (EACCES). Each test skips, saying why, where a
method cannot be used on this machine.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect.settings import PREFECT_API_URL

from tests.reliability.generated import write_images
from tests.reliability.read_only import METHODS, available, read_only
from tests.reliability.wm_process import (
    PREDICT_SETS,
    WmProcess,
    assert_no_traceback,
    run_wm,
    temp_files,
    without_file_permission_override,
)
from wmcore.cli import EXIT_UNWRITABLE
from wmcore.infer.results_table import COLUMNS
from wmcore.runtime.atomic import OutputNotWritable, check_writable, raise_if_unwritable

N_IMAGES = 120


@pytest.fixture(scope="module")
def methods_here(tmp_path_factory) -> dict[str, bool]:
    probe = tmp_path_factory.mktemp("read-only-probe")
    return {method: available(method, probe) for method in METHODS}


def _method_or_skip(methods_here: dict[str, bool], method: str | None = None) -> str:
    """`method`, or the first one that works here; skips when none (or not that one) does."""
    usable = [m for m in ([method] if method else METHODS) if methods_here[m]]
    if not usable:
        pytest.skip(f"cannot make a folder read-only here by {method or ' / '.join(METHODS)} "
                    "(needs root: chattr on ext4, mount, or capabilities to drop)")  # fmt: skip
    return usable[0]


def _error_lines(stderr: str, command: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"wm {command}: error:")]


def _assert_one_line(done_rc: int, stderr: str, command: str, folder: Path, option: str) -> str:
    assert done_rc == EXIT_UNWRITABLE, stderr[-3000:]
    assert_no_traceback(stderr)
    errors = _error_lines(stderr, command)
    assert len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith(f"wm {command}: error: cannot write to {folder}: "), errors[0]
    assert errors[0].endswith(f"; choose another {option}"), errors[0]
    return errors[0]


# --------------------------------------------------------------------------- before any work

COMMANDS = {  # command: (arguments, -S overrides, option named by the message); RO = the read-only folder
    "predict": (("predict", "INBOX", "--out", "RO", "--model", "MODEL"), (), "--out"),
    "screen": (("screen", "INBOX", "--out", "RO", "--model", "MODEL"), (), "--out"),
    "evaluate": (("evaluate", "--model", "MODEL"), ("paths.evaluate_dir=RO",), "paths.evaluate_dir"),
    "train": (("train",), ("paths.train_dir=RO",), "paths.train_dir"),
    "prepare": (("prepare",), ("paths.prepared=RO/prepared",), "paths.prepared"),  # built beside itself, in RO
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unwritable_output_folder_is_one_line_before_any_work(tmp_path, checkpoint, methods_here, command):
    method = _method_or_skip(methods_here)
    inbox, ro = tmp_path / "inbox", tmp_path / "ro"
    write_images(inbox, 3)
    args, sets, option = COMMANDS[command]
    fill = {"INBOX": str(inbox), "RO": str(ro), "MODEL": str(checkpoint)}
    args = tuple(fill.get(a, a) for a in args)
    sets = (*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}", *(s.replace("RO", str(ro)) for s in sets))
    with read_only(method, ro) as done:
        assert done
        run = run_wm(tmp_path, *args, sets=sets, preexec_fn=without_file_permission_override)
    _assert_one_line(run.returncode, run.stderr, command, ro, option)
    # Before any work: the error is all the process said (no model loaded, no flow started).
    assert run.stderr.strip().splitlines() == _error_lines(run.stderr, command), run.stderr[-3000:]
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("method", METHODS)
def test_predict_into_a_read_only_out_by_every_method(tmp_path, checkpoint, methods_here, method):
    _method_or_skip(methods_here, method)
    inbox, ro = tmp_path / "inbox", tmp_path / "ro"
    write_images(inbox, 2)
    with read_only(method, ro):
        # A folder to be made inside the read-only one fails the same way, naming the folder made.
        for out in (ro, ro / "new" / "out"):
            run = run_wm(tmp_path, "predict", str(inbox), "--out", str(out), "--model", str(checkpoint),
                         sets=PREDICT_SETS, preexec_fn=without_file_permission_override)  # fmt: skip
            line = _assert_one_line(run.returncode, run.stderr, "predict", out, "--out")
            reason = {"immutable": "Operation not permitted", "ro-bind": "Read-only file system",
                      "chmod": "Permission denied"}[method]  # fmt: skip
            assert reason in line


# --------------------------------------------------------------------------- mid-run


def journal_rows(out: Path) -> list[dict]:
    """Rows of results.jsonl; every line must be whole JSON ending in a newline (nothing torn)."""
    text = (out / "results.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def rows_written(out: Path) -> int:
    """Whole lines in results.jsonl now (polled while the run is writing it)."""
    try:
        return (out / "results.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def csv_names(out: Path) -> list[str]:
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text(encoding="utf-8"))))
    assert all(None not in row and len(row) == len(COLUMNS) for row in rows)  # every row whole
    return [row["name"] for row in rows]


def assert_outputs_whole(out: Path, names: list[str]) -> None:
    for name in names:
        with Image.open(out / f"{name}.mask.png") as mask, Image.open(out / f"{name}.prob.png") as prob:
            assert mask.size == prob.size == (40, 32), name
            assert set(np.unique(np.asarray(mask))) <= {0, 255}, name


@pytest.mark.parametrize("method", METHODS)
def test_out_turning_read_only_mid_run_keeps_every_finished_row(tmp_path, checkpoint, methods_here, method):
    _method_or_skip(methods_here, method)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    names = [p.name for p in write_images(inbox, N_IMAGES)]
    sets = (*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}")
    args = ("predict", str(inbox), "--out", str(out), "--model", str(checkpoint))
    run = WmProcess(tmp_path, *args, sets=sets, preexec_fn=without_file_permission_override)
    try:
        assert run.wait_until(lambda: rows_written(out) >= 10), f"the run ended first: {run.stderr[-2000:]}"
        with read_only(method, out) as done:
            assert done
            rc = run.wait()
            _assert_one_line(rc, run.stderr, "predict", out, "--out")
            rows = journal_rows(out)
            finished = [r["name"] for r in rows if r["status"] == "ok"]
            assert 10 <= len(finished) < N_IMAGES and len(finished) == len(set(finished))
            assert_outputs_whole(out, finished)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    # Writable again: the rerun redoes nothing finished and completes the rest, one row each.
    rerun = run_wm(tmp_path, *args, sets=sets)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["up_to_date"] >= len(finished) and summary["processed"] + summary["up_to_date"] == N_IMAGES
    assert sorted(r["name"] for r in journal_rows(out)) == names == csv_names(out)
    assert_outputs_whole(out, names)
    assert temp_files(out) == []


def test_screen_into_an_out_turning_read_only_mid_run_is_one_line(tmp_path, checkpoint, methods_here, prefect_harness):
    method = _method_or_skip(methods_here)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    write_images(inbox, 60)
    # The run reports to the test's Prefect server: a temporary one of its own would start and stop with it.
    run = WmProcess(tmp_path, "screen", str(inbox), "--out", str(out), "--model", str(checkpoint), "--chunk", "5",
                    sets=(*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}"),
                    preexec_fn=without_file_permission_override, PREFECT_API_URL=PREFECT_API_URL.value())  # fmt: skip
    try:
        assert run.wait_until(lambda: rows_written(out) >= 5), f"the run ended first: {run.stderr[-2000:]}"
        with read_only(method, out) as done:
            assert done
            rc = run.wait()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    _assert_one_line(rc, run.stderr, "screen", out, "--out")
    rows = journal_rows(out)
    assert_outputs_whole(out, [r["name"] for r in rows if r["status"] == "ok"])


# --------------------------------------------------------------------------- library level


def test_check_writable_creates_nothing_and_names_the_folder_and_the_option(tmp_path):
    (tmp_path / "out").mkdir()
    assert check_writable(tmp_path / "out", "--out") == tmp_path / "out"
    assert check_writable(tmp_path / "new" / "out", "--out") == tmp_path / "new" / "out"  # could be made
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]  # the probes are gone, nothing was made
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputNotWritable, match=r"file: exists and is not a folder; choose another --out$"):
        check_writable(tmp_path / "file", "--out")
    with pytest.raises(OutputNotWritable, match=r"file/sub: .*file is not a folder; choose another paths.train_dir$"):
        check_writable(tmp_path / "file" / "sub", "paths.train_dir")


def test_only_write_errors_of_the_output_become_unwritable(tmp_path):
    target = tmp_path / "out" / "x.png"
    with pytest.raises(OutputNotWritable, match=r"cannot write to .*out: Read-only file system \(x\.png\)"):
        raise_if_unwritable(OSError(30, "Read-only file system", str(target)), target)
    with pytest.raises(OutputNotWritable, match=r"Operation not permitted \(\.results\.lock\)"):
        raise_if_unwritable(PermissionError(1, "Operation not permitted", str(target.parent / ".results.lock")), target)
    # A denied read of an input elsewhere is not about the output folder: left alone.
    raise_if_unwritable(PermissionError(13, "Permission denied", str(tmp_path / "inbox" / "a.png")), target)


def test_the_error_survives_pickling():
    """Dask workers and Prefect states pickle it: it must come back whole."""
    error = pickle.loads(pickle.dumps(OutputNotWritable("/o", "Read-only file system", "--out")))
    assert str(error) == "cannot write to /o: Read-only file system; choose another --out"
    assert (error.folder, error.option) == (Path("/o"), "--out")
