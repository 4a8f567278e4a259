"""The results table of `wm predict`: one row per image, as JSONL and CSV, surviving reruns.

Rows are appended to `results.jsonl` as images finish (flushed and fsynced, so
a crash loses at most the row being written; a torn last line is ignored when
read back). `compact()` rewrites the journal and `results.csv` atomically with
exactly one row per image name (the newest wins), sorted by name; it runs at the
end of every run, including interrupted ones. A folder that turns read-only or full
raises OutputNotWritable / DiskFullError (one line in the CLI); the rows already
written stay intact: the journal is only appended to, both files only replaced whole.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from wmcore.runtime.atomic import raise_if_unwritable, write_text

log = logging.getLogger(__name__)

# has_watermark = score >= image_threshold; the mask (and area_fraction, boxes) = probability >= threshold
COLUMNS = (
    "name", "path", "status", "reason", "score", "image_threshold", "has_watermark", "threshold", "area_fraction",
    "n_regions", "boxes", "width", "height", "seconds",
)  # fmt: skip


class ResultsTable:
    """`results.jsonl` (journal, then compacted) and `results.csv` in `out_dir`."""

    def __init__(self, out_dir: Path) -> None:
        self.jsonl, self.csv = out_dir / "results.jsonl", out_dir / "results.csv"
        # Appends and compactions exclude each other across threads and processes (concurrent
        # screening chunks share a folder): a compaction must not drop a row appended meanwhile.
        self._lock_path = str(out_dir / ".results.lock")

    def _locked(self) -> FileLock:
        return FileLock(self._lock_path, timeout=300)

    def load(self) -> dict[str, dict[str, Any]]:
        """Rows by image name (the newest row of each name); unreadable lines are skipped."""
        rows: dict[str, dict[str, Any]] = {}
        try:
            with open(self.jsonl, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # the torn last line of an interrupted run
                    if isinstance(row, dict) and isinstance(row.get("name"), str):
                        rows[row["name"]] = row
        except FileNotFoundError:
            pass
        return rows

    def append(self, row: dict[str, Any]) -> None:
        """Add one row durably (it survives a crash right after this returns)."""
        try:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            with self._locked(), open(self.jsonl, "a+b") as fh:
                # A torn line from a killed run must not swallow this row: start on a fresh line.
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")
                fh.write((json.dumps(row, default=str) + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # a torn row is ignored when read back; the image is redone next run
            raise_if_unwritable(exc, self.jsonl)
            raise

    def compact(self) -> int:
        """Rewrite both files with one row per image, sorted by name; returns the row count."""
        try:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                rows = [r for _, r in sorted(self.load().items())]
                write_text(self.jsonl, "".join(json.dumps(r, default=str) + "\n" for r in rows))
                write_text(self.csv, to_csv(rows))
        except OSError as exc:  # the lock file; the old files are still whole
            raise_if_unwritable(exc, self.jsonl)
            raise
        return len(rows)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text with COLUMNS; boxes as a JSON list [[x0, y0, x1, y1], ...]."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "boxes": json.dumps(row.get("boxes", []))})
    return buf.getvalue()
