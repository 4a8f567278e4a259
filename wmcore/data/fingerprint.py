"""Content fingerprints of a prepared dataset: which samples, with which pixels, a run saw.

`split_fingerprint(prepared, splits)` hashes the manifest rows of those splits (each row carries
the sha256 of its image) and the bytes of each row's mask file, in manifest order. Two datasets
with the same fingerprint hold the same images and masks, whatever params made them; that is what
makes two test F1 figures comparable (the MLflow champion is compared only on the same test
fingerprint). It differs from stats.json's `fingerprint`, which names the recipe (params, seed,
generator code) a dataset is built from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from wmcore.errors import WmError

DIGEST_CHARS = 16  # hex digits kept: MLflow dataset digests are short strings


@dataclass(frozen=True)
class DataFingerprint:
    """digest: 16 hex digits; samples: rows hashed; splits: the splits they came from (manifest order)."""

    digest: str
    samples: int
    splits: tuple[str, ...]


def split_fingerprint(prepared: str | Path, splits: tuple[str, ...] | None = None) -> DataFingerprint:
    """Fingerprint of `splits` (None = every split) of the dataset in `prepared` (its manifest.jsonl).

    Raises WmError when the manifest is missing or a line is not JSON.
    """
    root = Path(prepared)
    manifest = root / "manifest.jsonl"
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WmError(f"{manifest}: cannot read the manifest ({exc.strerror}); run `wm prepare` first") from None
    h = hashlib.sha256()
    seen: list[str] = []
    samples = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WmError(f"{manifest}:{number}: not valid JSON ({exc.msg})") from None
        split = row.get("split")
        if splits is not None and split not in splits:
            continue
        if split not in seen:
            seen.append(split)
        h.update(json.dumps(row, sort_keys=True).encode())
        h.update(_file_digest(root / row["mask"]) if isinstance(row.get("mask"), str) else b"-")
        samples += 1
    return DataFingerprint(h.hexdigest()[:DIGEST_CHARS], samples, tuple(seen))


def _file_digest(path: Path) -> bytes:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return b"missing"
