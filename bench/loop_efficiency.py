"""How close the real training loop comes to its own model step, crop stage by crop stage (#14: >= 90%).

The loop's rate comes from a training run's history.json: each epoch row holds the epoch's own images
and step seconds (waits for data in, validation out) with its crop and micro-batch. The first epoch of
every stage is left out where the stage has more (it pays for the new shape's cuDNN autotuning, compile
and the loader's start). The model step's rate at the same crop and micro-batch comes from
`bench/gpu.py --sections recipe --recipe <the run's params files>` (batches already on the device).
Optionally the loader alone at a crop (bench/loader.py's loader.json) is shown beside them.

The whole-run figure weighs each stage by its time: the seconds the model step alone would have needed
for the images the loop trained at each stage, over the loop's seconds. Comparing the loop's run-wide
images/s with the model step at one crop (as #14's "47%" did) mixes stages of different cost per image.

    python bench/loop_efficiency.py --history results/train-full/history.json --gpu gpu.json [--loader loader.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TARGET = 0.9  # #14: the real training loop reaches at least 90% of the model step's images/s


def stage_rates(epochs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (crop, micro-batch) stage, in order: epochs, images, step seconds and images/s of the loop,
    each stage's first epoch left out where the stage has more than one. Rows without the per-epoch
    figures (histories before they were recorded) raise ValueError."""
    stages: list[dict[str, Any]] = []
    for row in epochs:
        if "epoch_images" not in row or "epoch_step_s" not in row:
            raise ValueError(f"epoch {row.get('epoch')}: no epoch_images / epoch_step_s (a history from older code)")
        key = (int(row["crop"]), int(row["batch_size"]))
        if not stages or (stages[-1]["crop"], stages[-1]["batch"]) != key:
            stages.append({"crop": key[0], "batch": key[1], "rows": []})
        stages[-1]["rows"].append(row)
    out = []
    for stage in stages:
        rows = stage.pop("rows")
        used = rows[1:] if len(rows) > 1 else rows
        images = sum(int(r["epoch_images"]) for r in used)
        seconds = sum(float(r["epoch_step_s"]) for r in used)
        out.append({**stage, "epochs": len(rows), "epochs_used": len(used), "images": images,
                    "step_s": round(seconds, 3), "images_per_s": round(images / seconds, 1) if seconds > 0 else None})  # fmt: skip
    return out


def efficiency(loop: list[dict[str, Any]], model: list[dict[str, Any]],
               loader: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Loop against model step per stage, and over the run weighted by time (see the module docstring).

    model: the recipe section's stages ({"crop", "batch", "images_per_s"}); loader: bench/loader.py rows
    ({"crop", "batch", "images_per_s", ...}; the fastest row of a (crop, batch) is shown). A stage the model
    step was not measured at gets no ratio and leaves the run-wide figure out (None)."""
    by_shape = {(int(r["crop"]), int(r["batch"])): float(r["images_per_s"]) for r in model}
    feeds: dict[tuple[int, int], float] = {}
    for r in loader or []:
        shape = (int(r["crop"]), int(r["batch"]))
        feeds[shape] = max(feeds.get(shape, 0.0), float(r["images_per_s"]))
    rows, model_s, loop_s, complete = [], 0.0, 0.0, True
    for stage in loop:
        shape = (stage["crop"], stage["batch"])
        ceiling = by_shape.get(shape)
        ratio = None
        if ceiling and stage["images_per_s"]:
            ratio = round(stage["images_per_s"] / ceiling, 3)
            model_s += stage["images"] / ceiling
            loop_s += stage["step_s"]
        else:
            complete = False
        rows.append({**stage, "model_images_per_s": ceiling, "loader_images_per_s": feeds.get(shape), "ratio": ratio})
    overall = round(model_s / loop_s, 3) if complete and loop_s > 0 else None
    return {"stages": rows, "ratio": overall, "target": TARGET, "met": None if overall is None else overall >= TARGET}


def markdown(result: dict[str, Any], history: str, gpu: str) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    lines = [f"# Training loop vs its model step ({history}; model step: {gpu})", "",
             "| crop | micro-batch | epochs (used) | loop img/s | model step img/s | loop / model | loader alone img/s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["stages"]:
        lines.append(f"| {r['crop']} | {r['batch']} | {r['epochs']} ({r['epochs_used']}) | {cell(r['images_per_s'])} | "
                     f"{cell(r['model_images_per_s'])} | {cell(r['ratio'])} | {cell(r['loader_images_per_s'])} |")  # fmt: skip
    verdict = "not measurable (a stage without its model step)" if result["ratio"] is None else (
        f"{result['ratio']:.3f} of the model step's time-weighted rate: target {TARGET} "
        + ("met" if result["met"] else "not met"))  # fmt: skip
    return "\n".join([*lines, "", f"Whole run: {verdict}.", ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history", type=Path, required=True, help="a training run's history.json")
    ap.add_argument("--gpu", type=Path, required=True, help="bench/gpu.py's JSON with its recipe section")
    ap.add_argument("--loader", type=Path, default=None, help="bench/loader.py's loader.json (optional)")
    ap.add_argument("--out", type=Path, default=None, help="write loop_efficiency.json and .md here")
    args = ap.parse_args(argv)
    try:
        loop = stage_rates(json.loads(args.history.read_text())["epochs"])
        recipe = json.loads(args.gpu.read_text()).get("recipe") or {}
        if "stages" not in recipe:
            raise ValueError(f"{args.gpu}: no recipe section ({recipe.get('error', 'run bench/gpu.py --sections recipe')})")
        feeds = json.loads(args.loader.read_text())["rows"] if args.loader and args.loader.is_file() else None
    except (OSError, ValueError, KeyError) as exc:
        print(f"loop_efficiency: {exc}", file=sys.stderr)
        return 2
    result = efficiency(loop, recipe["stages"], feeds)
    report = markdown(result, str(args.history), str(args.gpu))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "loop_efficiency.json").write_text(json.dumps(result, indent=1))
        (args.out / "loop_efficiency.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
