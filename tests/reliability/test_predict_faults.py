"""`wm predict` under real faults: SIGKILL mid-folder, then a rerun; the output disk filling up.

After a kill the rerun must process every image exactly once (the ones finished before the
kill are not redone), leave one table row per image and no temp file. A full disk must end
with one clear line naming the file, exit code 2, finished outputs intact, and a rerun (with
space again) completes the rest.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wmcore.runtime.atomic as atomic
from tests.reliability.generated import write_images
from tests.reliability.wm_process import PREDICT_SETS, WmProcess, assert_no_traceback, cli_args, run_wm, temp_files
from wmcore.cli import main
from wmcore.infer.results_table import ResultsTable
from wmcore.runtime.atomic import DiskFullError

N_IMAGES = 120


def table_rows(out: Path) -> list[dict]:
    """Rows of results.jsonl as written (a torn last line of a killed run is left out)."""
    rows = []
    for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def assert_complete_outputs(out: Path, names: list[str]) -> None:
    """Every name has a decodable 0/255 mask and a prob map of the image's size."""
    for name in names:
        with Image.open(out / f"{name}.mask.png") as mask, Image.open(out / f"{name}.prob.png") as prob:
            assert mask.size == prob.size == (40, 32), name
            assert set(np.unique(np.asarray(mask))) <= {0, 255}, name


def test_predict_killed_mid_folder_then_rerun_processes_each_image_once(tmp_path, checkpoint):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    names = [p.name for p in write_images(inbox, N_IMAGES)]
    sets = (*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}")
    args = ("predict", str(inbox), "--out", str(out), "--model", str(checkpoint))

    first = WmProcess(tmp_path, *args, sets=sets)
    rows_seen = lambda: (out / "results.jsonl").is_file() and len(table_rows(out)) >= 20  # noqa: E731
    assert first.kill_when(rows_seen), f"the run ended before it could be killed: {first.stderr[-2000:]}"
    done_before = {r["name"] for r in ResultsTable(out).load().values() if r["status"] == "ok"}
    assert 20 <= len(done_before) < N_IMAGES
    stamps = {n: (out / f"{n}.mask.png").stat().st_mtime_ns for n in done_before}

    second = run_wm(tmp_path, *args, sets=sets)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_no_traceback(second.stderr)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["processed"], summary["up_to_date"]) == (N_IMAGES - len(done_before), len(done_before))
    assert {n: (out / f"{n}.mask.png").stat().st_mtime_ns for n in done_before} == stamps  # not redone
    rows = table_rows(out)
    assert sorted(r["name"] for r in rows) == names and all(r["status"] == "ok" for r in rows)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + N_IMAGES
    assert_complete_outputs(out, names)
    assert temp_files(out) == []


# --------------------------------------------------------------------------- disk full


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size_kib: int) -> Iterator[bool]:
    """Mount a tmpfs of `size_kib` at `mount_point`; yields False when this machine cannot mount."""
    mount_point.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)],
                          capture_output=True, check=False)  # fmt: skip
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def resize_tmpfs(mount_point: Path, size_kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(mount_point)], check=True, capture_output=True)


def test_disk_full_is_a_clear_error_and_finished_outputs_survive(tmp_path, checkpoint):
    inbox, out = tmp_path / "inbox", tmp_path / "disk" / "out"
    names = [p.name for p in write_images(inbox, 40)]
    sets = (*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}")
    args = ("predict", str(inbox), "--out", str(out), "--model", str(checkpoint))
    with small_tmpfs(tmp_path / "disk", 64) as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here; test_disk_full_faked_enospc covers the write path")
        full = run_wm(tmp_path, *args, sets=sets)
        assert full.returncode == 2, full.stderr[-3000:]
        assert_no_traceback(full.stderr)
        error = [line for line in full.stderr.splitlines() if line.startswith("wm predict: error:")]
        assert len(error) == 1 and "no space left on device" in error[0] and str(out) in error[0]
        finished = sorted(r["name"] for r in ResultsTable(out).load().values() if r["status"] == "ok")
        assert 0 < len(finished) < len(names)
        assert_complete_outputs(out, finished)
        assert temp_files(out) == []  # partial files were removed, giving their space back

        resize_tmpfs(tmp_path / "disk", 4096)
        rerun = run_wm(tmp_path, *args, sets=sets)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["processed"] + summary["up_to_date"] == len(names)
        assert summary["up_to_date"] >= len(finished)
        assert sorted(r["name"] for r in table_rows(out)) == names
        assert_complete_outputs(out, names)


class FillingDisk:
    """Stands in for `open` in the atomic writer: room for `files` more files, then writes fail like a full disk."""

    def __init__(self, files: int) -> None:
        self.files = files

    def __call__(self, *args, **kwargs):
        fh = open(*args, **kwargs)  # noqa: SIM115 - closed by the atomic writer's with
        self.files -= 1
        if self.files < 0:
            fh.write = self._no_space
        return fh

    @staticmethod
    def _no_space(data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_faked_enospc(tmp_path, checkpoint, monkeypatch, capsys):
    """Where no tmpfs can be mounted: ENOSPC raised at the write call of the atomic writer."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    names = [p.name for p in write_images(inbox, 12)]
    argv = cli_args("predict", str(inbox), "--out", str(out), "--model", str(checkpoint),
                    sets=(*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}"))  # fmt: skip
    monkeypatch.setattr(atomic, "open", FillingDisk(files=9), raising=False)  # 4 images (mask, prob) and a half
    assert main(argv) == 2
    assert "no space left on device" in capsys.readouterr().err
    finished = sorted(r["name"] for r in ResultsTable(out).load().values() if r["status"] == "ok")
    assert 0 < len(finished) < len(names)
    assert_complete_outputs(out, finished)
    assert temp_files(out) == []
    monkeypatch.undo()
    assert main(argv) == 0
    assert sorted(ResultsTable(out).load()) == names


def test_disk_full_error_names_the_file(tmp_path):
    with pytest.raises(DiskFullError, match=r"x\.json: no space left on device"):
        atomic.raise_if_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "x.json")
    atomic.raise_if_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path / "x.json")  # not ours: no-op


def test_temp_files_of_killed_writers_are_removed_when_the_next_run_starts(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    ended = subprocess.Popen(["true"])  # a writer that was killed: its process is gone
    ended.wait()
    stale = [out / f".img00000.png.mask.png.tmp-{ended.pid}", out / "sub" / f".x.png.prob.png.tmp-{ended.pid}"]
    live = out / f".other.png.mask.png.tmp-{os.getpid()}"  # a writer that is still running (this process)
    for path in (*stale, live):
        path.write_bytes(b"\x89PNG half")
    write_images(tmp_path / "inbox", 1)
    argv = cli_args("predict", str(tmp_path / "inbox"), "--out", str(out), "--model", str(checkpoint),
                    sets=(*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}"))  # fmt: skip
    assert main(argv) == 0
    assert temp_files(out) == [live]
