"""Make a folder really unwritable, three ways, for tests of output folders that cannot be written.

- `immutable`: `chattr +i` (the issue's case: EPERM "Operation not permitted"; needs root and a
  file system with attributes, e.g. ext4; tmpfs has none).
- `ro-bind`: the folder bind-mounted read-only over itself (EROFS "Read-only file system", as a
  read-only mount; needs root and a mount namespace that allows it).
- `chmod`: mode 0555 (EACCES "Permission denied"); root ignores modes, so the `wm` process must
  run with `wm_process.without_file_permission_override` (capabilities dropped).

`read_only(method, folder)` is a context manager that yields True when it made the folder
unwritable (False: this machine cannot, the test skips) and undoes it on exit.
`available(method, probe_dir)` says beforehand whether a method works here.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.reliability.wm_process import file_modes_apply

METHODS = ("immutable", "ro-bind", "chmod")


def _run(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def _make_read_only(method: str, folder: Path) -> bool:
    if method == "immutable":
        return _run("chattr", "+i", str(folder))
    if method == "ro-bind":
        if not _run("mount", "--bind", str(folder), str(folder)):
            return False
        # A remount is refused (EBUSY) while a file of the mount is open for writing: retry.
        for _ in range(200):
            if _run("mount", "-o", "remount,ro,bind", str(folder)):
                return True
            time.sleep(0.01)
        _run("umount", str(folder))
        return False
    if method == "chmod":
        if not file_modes_apply():
            return False
        folder.chmod(0o555)
        return True
    raise ValueError(f"unknown method {method!r}; use one of {METHODS}")


def _undo(method: str, folder: Path) -> None:
    if method == "immutable":
        _run("chattr", "-i", str(folder))
    elif method == "ro-bind":
        _run("umount", str(folder))
    elif method == "chmod":
        folder.chmod(0o755)


@contextlib.contextmanager
def read_only(method: str, folder: Path) -> Iterator[bool]:
    """`folder` (created if missing) unwritable by `method` inside the block; yields whether it worked."""
    folder.mkdir(parents=True, exist_ok=True)
    done = _make_read_only(method, folder)
    try:
        yield done
    finally:
        if done:
            _undo(method, folder)


def available(method: str, probe_dir: Path) -> bool:
    """True when `method` makes a folder under `probe_dir` unwritable on this machine."""
    probe = probe_dir / f".read-only-probe-{method}"
    with read_only(method, probe) as done:
        if done and method != "chmod":  # chmod is proved by file_modes_apply in a child process
            try:
                (probe / "x").write_bytes(b"x")
            except OSError:
                pass
            else:
                done = False
    shutil.rmtree(probe, ignore_errors=True)
    return done
