"""Which files `wm predict` reads and where each one's outputs go.

Inputs are files, folders (walked recursively, following symlinks but never
entering a folder twice, so symlink loops end) and glob patterns. Every file
found is accounted for: a regular file with an image suffix (INPUT_SUFFIXES) is
decoded; any other file under a folder or matched by a glob comes back with a skip
reason ("not a regular file: FIFO", "no image extension", "not an image extension:
.txt", "unreadable: ..."), so it gets a `skipped` row instead of vanishing. A file
named on the command line is always tried, whatever its suffix (a special file is
still skipped: a FIFO or device is never opened). Only temp files of atomic writes
(`.<name>.tmp-<pid>`) and the output folder are left out.

Each input gets a safe output name: its path relative to the input root it was found
under, with `..`, absolute anchors and control characters removed, so nothing
can be written outside the output folder. Names keep the original suffix
(`a.jpg` and `a.png` do not collide) and clashes between roots get `~2`, `~3`.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from wmcore.data.layout import INPUT_SUFFIXES
from wmcore.runtime.atomic import is_temp_file

log = logging.getLogger(__name__)

GLOB_CHARS = re.compile(r"[*?\[]")
UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\\:]")
FILE_KINDS = (
    (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"),
)  # fmt: skip


@dataclass(frozen=True)
class InputImage:
    """One input: the file, its output name (POSIX, relative to the output folder) and, when it is
    not to be decoded, why (`skip`, recorded as its `skipped` row)."""

    path: Path
    name: str
    skip: str = ""


@dataclass(frozen=True)
class MissingInput:
    """An input argument that matched nothing usable, and why."""

    arg: str
    reason: str


def safe_name(relative: str | os.PathLike[str]) -> str:
    """A relative POSIX name that stays inside any folder it is joined to ('x' if nothing is left)."""
    parts = []
    for part in PurePosixPath(str(relative).replace("\\", "/")).parts:
        part = UNSAFE_CHARS.sub("_", part).strip()
        if part in ("", ".", "..", "/") or set(part) == {"."}:
            continue
        parts.append(part)
    return "/".join(parts) or "x"


def skip_reason(path: Path, named: bool = False) -> str:
    """Why `path` is not decoded ("" = it is): unreadable, not a regular file, or (unless `named`
    on the command line) a suffix that is not an image's."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:  # a symlink loop, a dangling link, a folder we may not enter
        return f"unreadable: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in FILE_KINDS if test(mode)), "special file")
        return f"not a regular file: {kind}"
    suffix = path.suffix.lower()
    if named or suffix in INPUT_SUFFIXES:
        return ""
    return f"not an image extension: {suffix}" if suffix else "no image extension"


def discover_inputs(args: list[str], exclude: Path | None = None) -> tuple[list[InputImage], list[MissingInput]]:
    """Expand files, folders and globs into inputs with unique safe names, in a stable order.

    Args:
        args: the command-line inputs.
        exclude: a folder never read (the output folder, when it lies inside an input folder).
    Returns: (every file found, those not to be decoded with their `skip` reason; inputs that are
        missing or globs that matched nothing: an empty folder is not an error, an inbox may be empty).
    """
    found: list[tuple[Path, str, str]] = []
    missing: list[MissingInput] = []
    skip_dir = exclude.resolve() if exclude is not None else None
    for arg in args:
        matches = _expand(arg, skip_dir)
        if matches is None:
            missing.append(MissingInput(arg, "not found"))
        elif not matches and Path(arg).is_dir():
            log.warning("%s: folder is empty (images: %s)", arg, " ".join(sorted(INPUT_SUFFIXES)))
        elif not matches:
            missing.append(MissingInput(arg, "no images matched"))
        found.extend(matches or [])
    return _unique(found), missing


def _expand(arg: str, skip_dir: Path | None) -> list[tuple[Path, str, str]] | None:
    """(file, relative name, skip reason) for one argument; None when it names nothing."""
    path = Path(arg)
    if GLOB_CHARS.search(arg):
        root = _glob_root(arg)
        out: list[tuple[Path, str, str]] = []
        for hit in sorted(glob.glob(arg, recursive=True)):
            p = Path(hit)
            if p.is_dir():
                out.extend((f, f"{_rel(p, root)}/{rel}", why) for f, rel, why in _walk(p, skip_dir))
            elif not is_temp_file(p):
                out.append((p, _rel(p, root), skip_reason(p)))
        return out
    if path.is_dir():
        return _walk(path, skip_dir)
    try:
        path.stat()
    except FileNotFoundError:  # nothing there, or a symlink to nothing
        return None
    except OSError:
        pass  # a symlink loop: its skip row says so
    return [(path, path.name, skip_reason(path, named=True))]


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard component."""
    parts = Path(pattern).parts
    first_wild = next(i for i, p in enumerate(parts) if GLOB_CHARS.search(p))
    return Path(*parts[:first_wild]) if first_wild else Path(".")


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _walk(folder: Path, skip_dir: Path | None) -> list[tuple[Path, str, str]]:
    """Files under `folder` (recursive, symlinks followed once): (file, name relative to it, skip reason)."""
    out: list[tuple[Path, str, str]] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        try:
            st = here.stat()
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen or (skip_dir is not None and here.resolve() == skip_dir):
            dirnames[:] = []  # a symlink loop or the output folder: do not descend
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            f = here / name
            # Special files, links that lead nowhere and non-images are kept too: each becomes a
            # skip row with the reason instead of vanishing without a word.
            if not is_temp_file(f):
                out.append((f, f.relative_to(folder).as_posix(), skip_reason(f)))
    return out


def _unique(found: list[tuple[Path, str, str]]) -> list[InputImage]:
    """Drop repeats of the same file; give clashing names a ~N suffix.

    A file found in a folder and also named on the command line is tried (the first name stays).
    """
    images: list[InputImage] = []
    files: dict[Path, int] = {}
    names: set[str] = set()
    for path, rel, why in found:
        real = Path(os.path.realpath(path))  # unlike Path.resolve, never raises on a symlink loop
        if real in files:
            if not why:
                images[files[real]] = replace(images[files[real]], skip="")
            continue
        files[real] = len(images)
        base = name = safe_name(rel)
        n = 1
        while name in names:
            n += 1
            name = f"{base}~{n}"
        names.add(name)
        images.append(InputImage(path, name, why))
    return images


def output_paths(out_dir: Path, name: str, overlay: bool, probability: bool = True) -> dict[str, Path]:
    """Output files of one image: mask (and prob, overlay) under out_dir, checked to stay inside it."""
    files = {"mask": out_dir / f"{name}.mask.png"}
    if probability:
        files["prob"] = out_dir / f"{name}.prob.png"
    if overlay:
        files["overlay"] = out_dir / f"{name}.overlay.jpg"
    root = out_dir.resolve()
    for f in files.values():
        if not f.resolve().is_relative_to(root):
            raise ValueError(f"output {f} escapes {out_dir}; refusing to write it")
    return files
