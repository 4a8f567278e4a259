"""Atomic file output: write to a temp file in the same folder, fsync, then rename.

A reader (or a rerun after a crash) sees either the old file or the complete new
one, never a half-written file. Temp files are named `.<name>.tmp-<pid>` so
stale ones from killed runs are recognisable and ignored by readers.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".tmp-"


def is_temp_file(path: str | Path) -> bool:
    name = Path(path).name
    return name.startswith(".") and TMP_MARK in name


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on clean exit fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_image(path: str | Path, image: Any, **save_kwargs: Any) -> None:
    """Save a PIL image atomically; the format comes from the file suffix."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(Path(path).suffix.lower(), "PNG")
    with atomic_open(path, "wb") as fh:
        image.save(fh, format=fmt, **save_kwargs)
