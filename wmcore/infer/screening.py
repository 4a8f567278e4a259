"""Inbox screening: predict only images not yet processed, safely under concurrent runs.

A processed-manifest (`processed.jsonl` in the output folder) survives restarts:
an image is identified by its output name plus size and modification time, so
a replaced file is screened again. Concurrent screenings of the same inbox
(two scheduled runs overlapping, or Dask workers) coordinate through a file
lock and a claims file: each run claims a chunk under the lock before working
on it, so no image is processed twice; claims of dead processes expire.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from wmcore.config import Params
from wmcore.errors import WmError
from wmcore.infer.inputs import InputImage, discover_inputs
from wmcore.runtime.atomic import raise_if_unwritable, write_json

MANIFEST = "processed.jsonl"
CLAIMS = "claims.json"
LOCK = ".screening.lock"


def image_key(item: InputImage) -> str:
    """Identity of an inbox image: name + size + mtime (a replaced file is a new image).

    A symlink that leads nowhere (a loop) is identified by the link itself, so it gets its skip
    row like any other file; raises OSError only for a file that is gone.
    """
    try:
        st = item.path.stat()
    except OSError:
        st = item.path.lstat()
    return f"{item.name}|{st.st_size}|{st.st_mtime_ns}"


def _pid_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # cannot check another machine's process: keep its claim
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


class ProcessedManifest:
    """The screening state of one output folder: processed images and live claims."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise_if_unwritable(exc, self.out / LOCK)
            raise
        self.lock = FileLock(str(self.out / LOCK), timeout=120)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The folder's lock held; a folder that cannot be written raises OutputNotWritable."""
        try:
            with self.lock:
                yield
        except OSError as exc:  # the lock file, or the manifest appended under it
            raise_if_unwritable(exc, self.out / LOCK)
            raise

    def processed(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        path = self.out / MANIFEST
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a killed run: that image is simply redone
                rows[row["key"]] = row
        return rows

    def _claims(self) -> dict[str, str]:
        try:
            claims = json.loads((self.out / CLAIMS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in claims.items() if _pid_alive(v)}

    def claim(self, items: list[InputImage], limit: int) -> list[InputImage]:
        """Atomically claim up to `limit` images that are neither processed nor claimed by a live run."""
        with self._locked():
            done, claims = self.processed(), self._claims()
            mine = []
            for item in items:
                try:
                    key = image_key(item)
                except OSError:
                    continue  # vanished since discovery
                if key in done or key in claims:
                    continue
                claims[key] = self.owner
                mine.append(item)
                if len(mine) >= limit:
                    break
            write_json(self.out / CLAIMS, claims)
        return mine

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Append finished rows ({"key", ...}) and release their claims."""
        with self._locked():
            with open(self.out / MANIFEST, "a", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, sort_keys=True, default=str) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            claims = self._claims()
            for row in rows:
                claims.pop(row["key"], None)
            write_json(self.out / CLAIMS, claims)

    def release(self, items: list[InputImage]) -> None:
        """Give back claims of images that were not finished (error path)."""
        with self._locked():
            claims = self._claims()
            for item in items:
                try:
                    claims.pop(image_key(item), None)
                except OSError:
                    continue
            write_json(self.out / CLAIMS, claims)


def discover_inbox(inbox: str | Path, out_dir: str | Path) -> list[InputImage]:
    """Images of the inbox folder (recursive), never the output folder inside it."""
    images, _missing = discover_inputs([str(inbox)], exclude=Path(out_dir))
    return images


def screen_chunk(params: Params, out_dir: str | Path, items: list[InputImage], model: str | None) -> list[dict]:
    """Predict a claimed chunk into `out_dir`, record it in the manifest; returns the manifest rows."""
    from wmcore.infer.folder import predict_images  # deferred on purpose: torch, only where work is done

    manifest = ProcessedManifest(out_dir)
    keys = {}
    for item in items:
        try:
            keys[item.name] = image_key(item)
        except OSError:
            continue
    try:
        results = predict_images(params, items, Path(out_dir), model=model)
    except BaseException:
        with contextlib.suppress(WmError, OSError):  # best effort: the error that stopped the chunk is reported
            manifest.release(items)
        raise
    rows = []
    for item in items:
        if item.name not in keys:
            continue
        res = results.get(item.name, {})
        rows.append({"key": keys[item.name], "name": item.name, "path": str(item.path), **res})
    manifest.record(rows)
    return rows
