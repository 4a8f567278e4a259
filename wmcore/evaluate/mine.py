"""`wm mine`: hard negatives, the places in real clean photos where a model sees a watermark that is not there.

The model (by default the shipped one, paths.pretrained) runs over the corpus's *train* photos
exactly as `wm predict` would; every connected region its probability map marks at
`mine.threshold` is a false positive (these photos have no watermark). Each region is written
with its box relative to the photo (0..1), its peak and mean probability, largest regions first,
at most `mine.max_per_photo` per photo, to `paths.hard_negatives` (JSONL, one line per region).
`wm prepare` then crops backgrounds around these boxes for `prepare.hard_negative_share` of its
samples, so training sees the textures that fooled the model (grass, water, foliage, facades,
line art) with a mask of 0 there.

With `mine.native_views`, the native views of the larger train pictures (paths.corpus_native_train:
windows at their packages' own resolution) are mined too: what the model marks at the detail of a
user's large photo, which native refinement sees and the 768 px stored copies never show. Their
regions are written with "view": "native", the box in the stored copy's coordinates (the area as a
share of the view), and `wm prepare` crops them from the view.

The val and test photos of the corpus are never mined: they stay an honest measure.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wmcore.config import Params
from wmcore.data.backgrounds import corpus_rows, native_train_views, stored_box
from wmcore.errors import WmError
from wmcore.infer.images import ImageSkip, load_rgb
from wmcore.infer.predictor import get_predictor
from wmcore.infer.regions import RegionFinder
from wmcore.runtime.atomic import write_json, write_text

log = logging.getLogger(__name__)


def photo_regions(probs: np.ndarray, threshold: float, min_pixels: int, limit: int) -> list[dict[str, Any]]:
    """Regions of `probs` (H, W) >= threshold: relative box [x0, y0, x1, y1] (0..1), peak, mean, area share."""
    finder = RegionFinder()
    finder.add(0, probs >= threshold)
    height, width = probs.shape
    out = []
    for r in finder.regions(min_pixels, limit):
        patch = probs[r.y0 : r.y1, r.x0 : r.x1]
        out.append({
            "box": [round(r.x0 / width, 5), round(r.y0 / height, 5), round(r.x1 / width, 5), round(r.y1 / height, 5)],
            "peak": round(float(patch.max()), 4),
            "mean": round(float(patch[patch >= threshold].mean()), 4),
            "area": round(r.area / (height * width), 6),
        })  # fmt: skip
    return out


def mine_hard_negatives(params: Params, model: str | None = None) -> dict[str, Any]:
    """Mine the corpus's train photos with `model` (None = paths.pretrained); write paths.hard_negatives.

    Returns a summary {"model", "photos", "photos_with_regions", "regions", "fp_area", "output"}, and with
    mine.native_views {"native_views", "native_regions", "native_fp_area"} for the views.
    """
    m = params.mine
    model_ref = model or params.paths.pretrained
    if model_ref is None:
        raise WmError("wm mine needs a model: pass --model PATH or set paths.pretrained")
    rows = corpus_rows("train", Path(params.paths.corpus))
    if not rows:
        raise WmError(f"{params.paths.corpus}: no corpus train photos to mine; run `wm corpus` first")
    predictor = get_predictor(model_ref, params)
    views = native_train_views(rows, Path(params.paths.corpus_native_train)) if m.native_views else {}
    if m.native_views and not views:
        log.warning("mine.native_views: no native train view in %s; mining the stored copies only",
                    params.paths.corpus_native_train)  # fmt: skip
    # (stored file, category, the file to read, the window it is of in the stored copy or None)
    todo = [(r["file"], r.get("category"), Path(params.paths.corpus) / r["file"], None) for r in rows]
    todo += [(r["file"], r.get("category"), Path(views[r["file"]][0]), views[r["file"]][1])
             for r in rows if r["file"] in views]  # fmt: skip
    lines: list[dict[str, Any]] = []
    marked = {False: 0, True: 0}
    total = {False: 0, True: 0}
    for file, category, path, window in tqdm(todo, desc="mine", unit="photo", mininterval=1.0):
        try:
            image = load_rgb(path)
        except ImageSkip as skip:
            log.warning("mine: %s", skip)
            continue
        (probs,) = predictor.predict([image])
        regions = photo_regions(probs, m.threshold, m.min_pixels, m.max_per_photo)
        native = window is not None
        marked[native] += int((probs >= predictor.threshold).sum())
        total[native] += probs.size
        if native:
            regions = [{**r, "box": stored_box(r["box"], window), "view": "native"} for r in regions]
        lines += [{"file": file, "category": category, **r} for r in regions]
    out = Path(params.paths.hard_negatives)
    write_text(out, "".join(_json_line(line) for line in lines))
    summary = {
        "model": str(model_ref),
        "photos": len(rows),
        "photos_with_regions": len({line["file"] for line in lines}),
        "regions": len(lines),
        "fp_area": round(marked[False] / max(1, total[False]), 6),
        "threshold": m.threshold,
        "output": str(out),
    }
    if m.native_views:
        summary |= {"native_views": len(views), "native_regions": sum(line.get("view") == "native" for line in lines),
                    "native_fp_area": round(marked[True] / max(1, total[True]), 6)}  # fmt: skip
    write_json(out.with_suffix(".summary.json"), summary)
    log.info("mined %d regions in %d of %d train photos -> %s", summary["regions"], summary["photos_with_regions"],
             summary["photos"], out)  # fmt: skip
    return summary


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True) + "\n"
