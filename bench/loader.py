"""The training data path with float32 and with uint8 batches (loader.uint8_batches), side by side;
or (`--compare resize`) with PIL's and torch's resize of the multiscale views (loader.multiscale_resize).

Each row is `wm bench`'s dataload measurement (bench/suite_sections.measure_loader): the train split
through WatermarkDataset + make_loader, every batch moved to the device (CUDA when there is one) and
made float32 there as the training step does, so uint8 batches pay their conversion where they
would. The two variants' rows alternate, `--repeats` times each, per (crop, batch, workers); half of
the views are multiscale (train.multiscale_share 0.5, the default). On a GPU
this is the loader half of "the training loop reaches 90% of the model step" (bench/gpu.sh runs it).

    .venv/bin/python bench/loader.py --prepared data/prepared --workers 0 2 --out bench/results/loader-cpu
    .venv/bin/python bench/loader.py --prepared data/prepared --compare resize --out bench/results/loader-resize
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.suite_sections import measure_loader  # noqa: E402
from wmcore.runtime.machine import machine_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", type=Path, required=True, help="a prepared dataset with a train split")
    ap.add_argument("--crops", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 4], help="batch size per crop, in order")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--pin", action="store_true", help="pinned host batches (CUDA only)")
    ap.add_argument("--cache", default="mmap", choices=["none", "ram", "mmap"])
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="mmap cache folder (e.g. paths.cache_dir, whose cache a training run built); default: a new one")
    ap.add_argument("--passes", type=int, default=3, help="passes per row (the first, filling caches, is apart)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compare", choices=["uint8", "resize"], default="uint8",
                    help="uint8: float32 vs uint8 batches (PIL resize); resize: PIL vs torch resize (--uint8 batches or not)")
    ap.add_argument("--uint8", action="store_true", help="with --compare resize: uint8 batches in both variants")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if len(args.batches) != len(args.crops):
        ap.error("--batches needs one batch size per crop")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine_info()
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="wm-bench-loader-"))
    # name -> (uint8 batches, multiscale resize); the first is the reference of the ratio
    if args.compare == "uint8":
        variants = {"float32": (False, "pil"), "uint8": (True, "pil")}
    else:
        variants = {"PIL resize": (args.uint8, "pil"), "torch resize": (args.uint8, "torch")}
    ref, new = variants
    batches = "float32 and uint8" if args.compare == "uint8" else "uint8" if args.uint8 else "float32"
    rows, lines = [], []
    for crop, batch in zip(args.crops, args.batches, strict=True):
        sizes = {"crop": crop, "batch": batch, "passes": args.passes}
        for workers in args.workers:
            runs: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, (uint8, resize) in variants.items():
                    row = measure_loader(args.prepared, cache_dir, args.cache, workers, args.pin, sizes, uint8, resize)
                    rows.append({**row, "crop": crop, "batch": batch, "device": device})
                    runs[name].append(row["images_per_s"])
                    print(json.dumps(rows[-1]), flush=True)
            a, b = statistics.median(runs[ref]), statistics.median(runs[new])
            lines.append(f"| {crop} | {batch} | {workers} | {a:.0f} ({', '.join(f'{v:.0f}' for v in runs[ref])}) | "
                         f"{b:.0f} ({', '.join(f'{v:.0f}' for v in runs[new])}) | {b / a:.2f}x |")  # fmt: skip
    load_end = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader.json").write_text(json.dumps({"machine": info, "load_end": load_end, "rows": rows}, indent=1))
    md = [f"# Training data path: {ref} vs {new}", "",
          f"`bench/loader.py`, {args.prepared} train split, {args.cache} cache, pin {args.pin}, batches made float on "
          f"{device}, {batches} batches; {args.passes} passes per row, images/s of the passes after the first; median (runs). "
          f"{info.get('cores_free')} free of {info.get('cores_visible')} cores, load {info.get('loadavg_start')} at "
          f"start, {load_end} at end.", "",
          f"| crop | batch | workers | {ref} img/s | {new} img/s | {new} / {ref} |", "|---|---|---|---|---|---|",
          *lines, ""]  # fmt: skip
    (args.out / "README.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
