"""Inbox screening under real faults: two `wm screen` processes at once, a transient I/O error in a task.

Two screenings started together on one inbox and one output folder must screen every image
exactly once between them, and leave a manifest of valid lines (one per image) and no claims.
A Prefect task with retries whose first attempt hits an I/O error (its output folder path is
blocked by a file, as when a share is not mounted yet) must recover on its retry.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from flows.screening import run_screening
from tests.reliability.generated import write_images
from tests.reliability.wm_process import PREDICT_SETS, REPO_PARAMS, WmProcess, assert_no_traceback, temp_files
from wmcore.infer.screening import CLAIMS, MANIFEST

N_IMAGES = 40


def manifest_lines(out: Path) -> list[dict]:
    """Every line of the processed-manifest, each of which must be valid JSON."""
    return [json.loads(line) for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines()]


def test_two_screenings_at_once_screen_each_image_exactly_once(tmp_path, checkpoint, prefect_harness):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    names = sorted(p.name for p in write_images(inbox, N_IMAGES, size=(192, 192)))  # 9 tiles each: seconds of work
    sets = (*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}")
    args = ("screen", str(inbox), "--out", str(out), "--model", str(checkpoint), "--chunk", "2")
    api = {"PREFECT_API_URL": PREFECT_API_URL.value()}  # both report to the test's server: no start-up each
    runs = [WmProcess(tmp_path, *args, sets=sets, **api) for _ in range(2)]
    deadline = time.monotonic() + 300
    while not (out / CLAIMS).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    both_alive_while_claiming = all(run.proc.poll() is None for run in runs)
    codes = [run.wait(timeout=300) for run in runs]
    assert codes == [0, 0], [run.stderr[-2000:] for run in runs]
    for run in runs:
        assert_no_traceback(run.stderr)
    screened = [json.loads(run.stdout.strip().splitlines()[-1])["screened"] for run in runs]
    assert both_alive_while_claiming  # the runs overlapped: one was alive while the other held claims
    assert sum(screened) == N_IMAGES  # between them, each image once (how they shared it varies)
    rows = manifest_lines(out)
    assert sorted(r["name"] for r in rows) == names
    assert len({r["key"] for r in rows}) == N_IMAGES and all(r["status"] == "ok" for r in rows)
    assert json.loads((out / CLAIMS).read_text()) == {}
    table = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in table) == names
    assert temp_files(out) == []


class UnblockOnRetry(logging.Handler):
    """Removes the file blocking the output folder once Prefect announces the first retry."""

    def __init__(self, blocker: Path) -> None:
        super().__init__(logging.DEBUG)
        self.blocker, self.retries, self.failures = blocker, 0, []

    def emit(self, record: logging.LogRecord) -> None:  # logging.Handler.handle holds self.lock around this
        text = record.getMessage()
        if "Retry 1/" in text:
            self.retries += 1
            self.failures.append(f"{getattr(record, 'task_run_name', '?')}: {text}")
            self.blocker.unlink(missing_ok=True)


def test_a_task_recovers_from_a_transient_io_error_on_its_retry(tmp_path, checkpoint, prefect_harness):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    write_images(inbox, 4)
    out.write_text("not a folder (yet)")  # claim-chunk's first attempt: FileExistsError creating `out`
    watcher = UnblockOnRetry(out)
    prefect_logger = logging.getLogger("prefect.task_runs")
    prefect_logger.addHandler(watcher)
    level = prefect_logger.level
    prefect_logger.setLevel(logging.INFO)
    try:
        result = run_screening(str(inbox), str(out), str(checkpoint), str(REPO_PARAMS), chunk_size=4,
                               overrides=[*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    finally:
        prefect_logger.removeHandler(watcher)
        prefect_logger.setLevel(level)
    assert watcher.retries == 1 and "FileExistsError" in watcher.failures[0], watcher.failures
    assert "claim-chunk" in watcher.failures[0]
    assert result["screened"] == 4 and all(r["status"] == "ok" for r in result["rows"])
    assert len(manifest_lines(out)) == 4
