"""Content hashes of files: the one implementation every layer uses (checkpoint identities, ONNX caches,
pinned downloads, the shipped weights' provenance)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of the file at `path`, read in `chunk`-byte blocks (memory flat in the file size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
