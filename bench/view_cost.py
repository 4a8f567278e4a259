"""What one training view costs a loader worker: crop (plain or multiscale), flips and the uint8 tensor,
per crop size, multiscale share and resize implementation (loader.multiscale_resize), on one core.

The decoded picture comes from memory (no file or cache read), so this is the view code alone; bench/loader.py
measures the whole data path.

    .venv/bin/python bench/view_cost.py --out bench/results/loader-resize/view_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wmcore.data.crops import RESIZERS, random_crop, random_flips  # noqa: E402
from wmcore.data.dataset import to_tensors  # noqa: E402

SHAPES = [(768, 1024), (1024, 768), (600, 900), (900, 900)]  # prepared pictures are 384-1024 px


def view_ms(crop: int, share: float, resize: str, n: int) -> float:
    """Mean ms per view over n views of four pictures (each view seeded by its number, as the dataset does)."""
    rng = np.random.default_rng(0)
    pictures = [(rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
                 np.where(rng.random(shape) < 0.1, 255, 0).astype(np.uint8)) for shape in SHAPES]  # fmt: skip
    started = time.perf_counter()
    for i in range(n):
        draw = np.random.default_rng(i)
        image, mask = pictures[i % len(pictures)]
        image, mask = random_crop(image, mask, crop, draw, share, 0.5, resize)
        to_tensors(*random_flips(image, mask, draw), uint8=True)
    return 1000 * (time.perf_counter() - started) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, nargs="+", default=[256, 384])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--views", type=int, default=400)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # as in a loader worker
    load = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for crop in args.crops:
        for share in args.shares:
            for resize in RESIZERS if share > 0 else RESIZERS[:1]:
                ms = view_ms(crop, share, resize, args.views)
                rows.append({"crop": crop, "multiscale_share": share, "resize": resize, "ms_per_view": round(ms, 2),
                             "views_per_s": round(1000 / ms)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    load_end = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load_start": load, "load_end": load_end, "threads": 1, "rows": rows}, indent=1))
    md = ["# One training view's cost to a loader worker (crop, flips, uint8 tensor; one thread)", "",
          f"`bench/view_cost.py`, {args.views} views per row of four random 600-1024 px pictures held in memory; "
          f"load {load} at start, {load_end} at end.", "",
          "| crop | multiscale share | resize | ms per view | views/s |", "|---|---|---|---|---|",
          *[f"| {r['crop']} | {r['multiscale_share']} | {r['resize']} | {r['ms_per_view']} | {r['views_per_s']} |"
            for r in rows], ""]  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
