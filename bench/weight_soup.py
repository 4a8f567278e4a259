"""Uniform weight average ("model soup") of checkpoints fine-tuned one from another, written as a train dir.

    .venv/bin/python bench/weight_soup.py results/train-soup56 results/train-p5/best.pt results/train-p6/best.pt

writes <out>/best.pt (the averaged float tensors, fp32 when any input is; every other entry of the first
checkpoint's model state as it is) and copies the last checkpoint's history.json and train_summary.json beside it, so
`wm evaluate` and `wm export-weights` treat the folder like a training run's (the soup adds no training:
its training figures are those of the last run). The shipped phase-5/6 soup: README, models/wmdetect.json.

`PATH@W` weighs a checkpoint W times (default 1): a checkpoint that is itself the mean of two runs, given @2
beside a third run, makes the uniform mean of all three (the shipped fp16 models/wmdetect.pt stands in for
the lost fp32 results/train-soup56/best.pt that way).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

# Entries of a training checkpoint that belong to one run's optimisation, not to the averaged weights.
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng", "train_state")


def parse(arg: str) -> tuple[str, float]:
    """'PATH' or 'PATH@W' -> (path, weight)."""
    path, _, weight = arg.rpartition("@") if "@" in arg else (arg, "", "1")
    try:
        w = float(weight)
    except ValueError:
        raise SystemExit(f"weight_soup: {arg!r}: the weight after @ must be a number") from None
    if w <= 0:
        raise SystemExit(f"weight_soup: {arg!r}: the weight must be > 0")
    return path, w


def soup(paths: list[str]) -> dict:
    """The first checkpoint with its model's float tensors replaced by the weighted mean over all `paths`."""
    parsed = [parse(a) for a in paths]
    cks = [torch.load(p, map_location="cpu", weights_only=False) for p, _ in parsed]
    weights = torch.tensor([w for _, w in parsed], dtype=torch.float64)
    weights = weights / weights.sum()
    keys = set(cks[0]["model"])
    if any(set(c["model"]) != keys for c in cks):
        raise SystemExit("weight_soup: the checkpoints hold different tensors (another architecture?)")

    def mean(k: str, v: torch.Tensor) -> torch.Tensor:
        if not v.is_floating_point():
            return v
        stacked = torch.stack([c["model"][k].double() for c in cks])
        dtype = torch.float32 if any(c["model"][k].dtype == torch.float32 for c in cks) else v.dtype
        return (stacked * weights.view(-1, *[1] * v.dim())).sum(0).to(dtype)

    state = {k: mean(k, v) for k, v in cks[0]["model"].items()}
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
        source = Path(parse(paths[-1])[0]).parent / name
        if source.is_file():
            shutil.copy(source, out / name)
    print(f"wrote {out / 'best.pt'} (mean of {len(paths)} checkpoints)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
