"""Uniform weight average ("model soup") of checkpoints fine-tuned one from another, written as a train dir.

    .venv/bin/python bench/weight_soup.py results/train-soup56 results/train-p5/best.pt results/train-p6/best.pt

writes <out>/best.pt (the averaged float tensors; every other entry of the first checkpoint's model
state as it is) and copies the last checkpoint's history.json and train_summary.json beside it, so
`wm evaluate` and `wm export-weights` treat the folder like a training run's (the soup adds no training:
its training figures are those of the last run). The shipped phase-5/6 soup: README, models/wmdetect.json.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

# Entries of a training checkpoint that belong to one run's optimisation, not to the averaged weights.
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng", "train_state")


def soup(paths: list[str]) -> dict:
    """The first checkpoint with its model's float tensors replaced by the mean over all `paths`."""
    cks = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    keys = set(cks[0]["model"])
    if any(set(c["model"]) != keys for c in cks):
        raise SystemExit("weight_soup: the checkpoints hold different tensors (another architecture?)")
    state = {
        k: torch.stack([c["model"][k].double() for c in cks]).mean(0).to(v.dtype) if v.is_floating_point() else v
        for k, v in cks[0]["model"].items()
    }
    first = cks[0]
    kept = {k: v for k, v in first.items() if k not in TRAINING_STATE}
    return {**kept, "model": state, "meta": {**first.get("meta", {}), "soup_of": [str(p) for p in paths]}}


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    out, paths = Path(argv[0]), argv[1:]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(soup(paths), out / "best.pt")
    for name in ("history.json", "train_summary.json"):
        source = Path(paths[-1]).parent / name
        if source.is_file():
            shutil.copy(source, out / name)
    print(f"wrote {out / 'best.pt'} (mean of {len(paths)} checkpoints)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
