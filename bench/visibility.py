"""How much of the ground-truth mask does the image visibly show? A ceiling for pixel F1 on our renders.

The mask holds every pixel where the mark's alpha exceeds `prepare.mask_alpha_threshold` (5%), whatever the
mark does to the picture there: a white fringe pixel over a white sky is in the mask and changes nothing.
This regenerates samples of a prepared split with the library's own generator (`generate_sample`, the same
seed and params; each regenerated image is checked equal to the stored one) and records, per pixel, the
visible change the mark makes: the largest channel difference between the final image and the same picture
without the mark (both through the same JPEG round trip when the sample had one, so compression noise away
from the mark cancels). Reported: the share of mask pixels changed by fewer than 2, 4, 8 and 16 grey levels,
and the pooled pixel F1 of "visible change oracles" that know the clean picture (the best single threshold on
that change): a detector sees only the final image, so such an oracle is a reference, not a hard bound (shape
priors can fill an invisible fringe, and can not help missing it).

    .venv/bin/python bench/visibility.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        -S paths.prepared=data/prepared-full -S prepare.n_train=1 -S prepare.hard_negative_share=0 \
        --split test --out bench/results/visibility
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
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import wmcore.data.generator as generator  # noqa: E402
from wmcore.config import load_params  # noqa: E402
from wmcore.data.backgrounds import discover_backgrounds  # noqa: E402
from wmcore.data.compose import jpeg_roundtrip, to_uint8  # noqa: E402
from wmcore.data.generator import GeneratorContext, generate_sample, plan_heldout  # noqa: E402
from wmcore.data.prepare import sample_id  # noqa: E402
from wmcore.metrics import counts_at_thresholds, scores_from_counts  # noqa: E402

LEVELS = (2, 4, 8, 16)  # grey levels of visible change
MAX_CHANGE = 256


class Recorder:
    """Wraps the generator's composite / jpeg_roundtrip to keep the picture the mark went onto and the JPEG quality."""

    def __init__(self) -> None:
        self.background: np.ndarray | None = None
        self.quality: int | None = None
        self._composite, self._jpeg = generator.composite, generator.jpeg_roundtrip

    def composite(self, background: np.ndarray, layer: object) -> np.ndarray:
        self.background = background  # the last call composes the mark over the (scene-texted) background
        return self._composite(background, layer)

    def jpeg(self, image: np.ndarray, quality: int) -> np.ndarray:
        self.quality = quality
        return self._jpeg(image, quality)

    def __enter__(self) -> Recorder:
        generator.composite, generator.jpeg_roundtrip = self.composite, self.jpeg
        return self

    def __exit__(self, *exc: object) -> None:
        generator.composite, generator.jpeg_roundtrip = self._composite, self._jpeg


def visible_change(ctx: GeneratorContext, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(final image, mask bool, per-pixel visible change 0..255) of sample `index` of `split`."""
    with Recorder() as rec:
        sample = generate_sample(ctx, split, index)
    clean = to_uint8(rec.background)
    if rec.quality is not None:
        clean = jpeg_roundtrip(clean, rec.quality)
    change = np.abs(sample.image.astype(np.int16) - clean.astype(np.int16)).max(axis=2)
    return sample.image, sample.mask > 0, change


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--params-extra", action="append", default=[])
    ap.add_argument("-S", "--set", action="append", default=[], dest="overrides")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="first N samples (0 = the split's count)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    params = load_params(args.params, args.overrides, args.params_extra)
    p, start, load = params.prepare, time.perf_counter(), os.getloadavg()
    catalog = discover_backgrounds(p, params.paths.corpus, params.paths.corpus_native_train)
    ctx = GeneratorContext(p, params.base.seed, catalog, plan_heldout(p, params.base.seed, catalog), ())
    count = {"train": p.n_train, "val": p.n_val, "test": p.n_test, "test_heldout": p.n_test_heldout}[args.split]
    n = min(args.limit or count, count)
    # change histograms of mask (row 0) and clean (row 1) pixels; mask pixels by change bin
    hist = np.zeros((2, MAX_CHANGE), np.int64)
    mismatched = 0
    for i in range(n):
        image, mask, change = visible_change(ctx, args.split, i)
        stored = Path(params.paths.prepared) / args.split / "images" / f"{sample_id(args.split, i)}.png"
        with Image.open(stored) as im:
            mismatched += not np.array_equal(np.asarray(im.convert("RGB")), image)
        hist[0] += np.bincount(change[mask].ravel(), minlength=MAX_CHANGE)
        hist[1] += np.bincount(change[~mask].ravel(), minlength=MAX_CHANGE)
    pos = hist[0].sum()
    below = {f"lt_{v}": round(float(hist[0][:v].sum() / pos), 4) for v in LEVELS}
    # the histograms are threshold_histograms' layout, so the pipeline's counts give "change >= t" per grey level t
    scores = scores_from_counts(counts_at_thresholds(torch.from_numpy(hist))[1], empty_is_perfect=False)
    f1, precision, recall = (scores[k].numpy() for k in ("f1", "precision", "recall"))
    best = int(np.argmax(f1[1:]) + 1)  # a threshold of 0 marks everything
    result = {
        "split": args.split, "samples": n, "regenerated_differ_from_stored": mismatched,
        "mask_pixels": int(pos), "mask_share_changed_less_than": below,
        "oracle_best_threshold_grey_levels": best, "oracle_f1": round(float(f1[best]), 4),
        "oracle_precision": round(float(precision[best]), 4), "oracle_recall": round(float(recall[best]), 4),
        "oracle_f1_at": {str(t): round(float(f1[t]), 4) for t in (1, 2, 4, 8, 16)},
        "seconds": round(time.perf_counter() - start, 1), "load_before": round(load[0], 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"visibility-{args.split}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if not mismatched else 1


if __name__ == "__main__":
    raise SystemExit(main())
