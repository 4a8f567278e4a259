"""Atomic file output: write to a temp file in the same folder, fsync, then rename.

A reader (or a rerun after a crash) sees either the old file or the complete new
one, never a half-written file. Temp files are named `.<name>.tmp-<pid>` so
stale ones from killed runs are recognisable, ignored by readers and removed by
`remove_stale_temp_files` when the next run starts. A full disk (ENOSPC, EDQUOT)
raises `DiskFullError`, a WmError naming the file: the CLI prints it on one line,
and every file finished before it is intact. A folder that cannot be written
(read-only mount, permissions, immutable attribute: EROFS, EACCES, EPERM) raises
`OutputNotWritable` the same way; `check_writable` finds it before a run starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from wmcore.errors import WmError

TMP_MARK = ".tmp-"
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
WRITE_DENIED_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
PROBE_NAME = ".wm-write-probe"


class DiskFullError(WmError):
    """No space (or quota) left while writing a file; files finished before it are intact."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(
            f"{path}: no space left on device; files finished before it are kept: free space, then rerun to resume"
        )


def raise_if_disk_full(exc: OSError, path: str | Path) -> None:
    """Turn an ENOSPC/EDQUOT OSError into DiskFullError naming `path`; other errors are left alone."""
    if exc.errno in NO_SPACE_ERRNOS:
        raise DiskFullError(path) from None


class OutputNotWritable(WmError):
    """An output folder where files cannot be created or replaced; files finished before it are intact.

    `option` is how the user chooses another folder (`--out`, `paths.train_dir`, ...).
    """

    def __init__(self, folder: str | Path, reason: str, option: str = "output folder") -> None:
        self.folder, self.reason, self.option = Path(folder), reason, option
        super().__init__(f"cannot write to {folder}: {reason}; choose another {option}")

    def __reduce__(self) -> tuple:  # pickled whole across processes (Dask workers, Prefect states)
        return (type(self), (self.folder, self.reason, self.option))


def raise_if_unwritable(exc: OSError, path: str | Path) -> None:
    """Turn an OSError of writing `path` into OutputNotWritable (naming its folder) or DiskFullError.

    Write-denied errors about `path`, its temp file, a file beside it (a lock) or a folder on its
    way count; errors about other files (a denied read of an input) are left alone.
    """
    raise_if_disk_full(exc, path)
    if exc.errno not in WRITE_DENIED_ERRNOS:
        return
    path, name = Path(path), exc.filename
    if name is None or Path(name).parent == path.parent:  # None: a write to the open file
        raise OutputNotWritable(path.parent, f"{exc.strerror or exc} ({Path(name or path).name})") from None
    if path.is_relative_to(name):  # a folder on its way that could not be made
        raise OutputNotWritable(name, exc.strerror or str(exc)) from None


def check_writable(folder: str | Path, option: str) -> Path:
    """Prove that files can be created in `folder`, or that it can be made: before any work.

    A probe file is created, synced and removed in `folder`, or in its nearest existing parent
    when it does not exist yet (making it needs just that); nothing is left behind, and a missing
    folder is not created here. The probe is a temp file (`is_temp_file`), so one left by a kill
    is removed like any other. Raises OutputNotWritable naming the folder and `option` (how to
    choose another), or DiskFullError. Returns `folder`.
    """
    folder = Path(folder)
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        reason = "exists and is not a folder" if existing == folder.absolute() else f"{existing} is not a folder"
        raise OutputNotWritable(folder, reason, option)
    probe = temp_path(existing / PROBE_NAME)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise_if_disk_full(exc, probe)
        raise OutputNotWritable(folder, exc.strerror or str(exc), option) from None
    return folder


def is_temp_file(path: str | Path) -> bool:
    name = Path(path).name
    return name.startswith(".") and TMP_MARK in name


def temp_path(path: Path) -> Path:
    """The temp file a write of `path` goes through (same folder, recognisable by is_temp_file)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path`; on clean exit the file there is fsynced and renamed over `path`.

    For writers that take file names (libvips); atomic_open is the same for an open file.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()  # also gives the space of the partial file back
        if isinstance(exc, OSError):
            raise_if_unwritable(exc, path)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on clean exit fsync and rename it over `path`."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh


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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temp_files(folder: str | Path) -> int:
    """Delete temp files under `folder` whose writer (a process of this machine) is gone; returns how many.

    Run it when a run that owns `folder` starts: temp files of live processes (concurrent writers
    on this machine) are kept. A folder shared with writers on other machines must not be cleaned.
    """
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            pid = name.rpartition(TMP_MARK)[2]
            if is_temp_file(name) and pid.isdigit() and not _process_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed
