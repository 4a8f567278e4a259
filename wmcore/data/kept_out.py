"""What a model's training never drew, so that a held-out score can say whether it is one.

A prepared dataset's stats.json "heldout" lists, per registry, the names its train/val/test splits
kept out (fonts, phrase kinds, styles, background photos, procedural kinds): what its test_heldout
split draws. A training run records in its checkpoint's `meta["kept_out"]` those names of the
dataset it trained on, intersected with the record of the checkpoint it warm-started from: a
fine-tune has also seen what its start saw. A start without a record makes the record unknown
(None). `wm evaluate` then counts the evaluated dataset's held-out names the model trained on.

Why: fine-tune phases drawn on other seeds (other held-out plans) trained the shipped weights on
every name the evaluation splits' test_heldout holds out, and nothing said so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REGISTRIES = ("fonts", "phrase_kinds", "styles", "photos", "procedural")

KeptOut = dict[str, list[str]]


def as_kept_out(report: Any) -> KeptOut | None:
    """The names per registry of a stats.json "heldout" report or a checkpoint record; None if it is not one."""
    if not isinstance(report, dict) or not all(isinstance(report.get(r), list) for r in REGISTRIES):
        return None
    return {r: sorted(str(x) for x in report[r]) for r in REGISTRIES}


def read_dataset_kept_out(prepared: str | Path) -> tuple[KeptOut | None, str]:
    """(names the dataset at `prepared` kept out of train/val/test, or None; why None, else "")."""
    path = Path(prepared) / "stats.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, f"cannot read {path} ({exc.strerror})"
    except ValueError as exc:
        return None, f"{path} is not JSON ({exc})"
    kept = as_kept_out(report.get("heldout") if isinstance(report, dict) else None)
    return kept, "" if kept is not None else f'{path} has no "heldout" plan (a dataset `wm prepare` wrote)'


def lineage(own: KeptOut | None, start_meta: dict[str, Any] | None) -> KeptOut | None:
    """What a run never drew: its dataset's kept-out names, less what its warm start trained on (`start_meta`: the
    start checkpoint's meta; None = no warm start). None = unknown."""
    if own is None or start_meta is None:
        return own
    inherited = as_kept_out(start_meta.get("kept_out"))
    if inherited is None:
        return None
    return {r: sorted(set(own[r]) & set(inherited[r])) for r in REGISTRIES}


def trained_on(heldout: KeptOut, kept_out: Any) -> dict[str, int] | None:
    """Per registry, how many of `heldout` (a dataset's held-out names) the model trained on; None = unknown."""
    kept = as_kept_out(kept_out)
    if kept is None:
        return None
    return {r: len(set(heldout[r]) - set(kept[r])) for r in REGISTRIES}
