"""Sweep of the working-scale refinement settings (predict.refine_threshold, predict.refine_min_scale).

For every image of val, test, test_heldout and the real clean photos (real_val, real_test), one
working-view pass and the native windows the loosest setting would refine are computed once; each
setting's map is then assembled from them exactly as rule "refine" does (the windows a stricter
threshold keeps are the loosest setting's windows whose working peak reaches it, in the same order;
a larger min_scale drops the windows of smaller images). Each setting is calibrated on val + real_val
(wm evaluate's joint thresholds, evaluate.f1_tolerance included; real_val / real_test with their
native views, paths.corpus_native) and scored on test, test_heldout and real_test, so the rows compare
like `wm evaluate` runs would, at a fraction of their cost.

Cost: the mean number of native windows per photo of the screening workload (`bench/screen.py`: the
corpus's test photos cropped to 4:3 and resized to 1024x768), each a 512 px tile: the extra work
refinement adds to `wm predict` on ordinary photos. The bench measures the resulting speed.

    .venv/bin/python bench/refine_sweep.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        -S paths.prepared=data/prepared-full --model models/wmdetect.pt --out bench/results/refine_sweep
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.screen import cover_resize  # noqa: E402
from wmcore.config import load_params  # noqa: E402
from wmcore.data.layout import HELDOUT_SPLIT  # noqa: E402
from wmcore.errors import WmError  # noqa: E402
from wmcore.evaluate.calibrate import joint_thresholds  # noqa: E402
from wmcore.evaluate.report import real_clean_metrics, split_metrics  # noqa: E402
from wmcore.evaluate.samples import load_split, read_sample  # noqa: E402
from wmcore.evaluate.score import SplitScores, _add_image, real_clean_samples  # noqa: E402
from wmcore.infer.predictor import get_predictor  # noqa: E402
from wmcore.infer.sinks import ProbabilityMapSink  # noqa: E402
from wmcore.infer.working_scale import (  # noqa: E402
    RefinedStripSink,
    RefineSettings,
    refine_windows,
    run_global_views,
    stream_upsampled,
)
from wmcore.runtime.device import configure_threads  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
MIN_SCALES = (1.0, 1.5)


def settings_of(pp, multiple: int, thresholds, min_scales) -> dict[tuple[float, float], RefineSettings]:
    return {(t, s): RefineSettings(t, pp.refine_max_tiles, pp.tile_size, pp.tile_overlap, multiple, s)
            for t in thresholds for s in min_scales}  # fmt: skip


def maps_per_setting(image: np.ndarray, predictor, settings) -> dict[tuple[float, float], np.ndarray]:
    """{setting: rule "refine" map of `image`} from one working pass and the union of native windows."""
    height, width = image.shape[:2]
    small = run_global_views([image], predictor.params.predict.global_side, predictor._run_native).get(0)
    if small is None:  # fits the working side: one native pass, every setting alike
        sink = ProbabilityMapSink(height, width)
        predictor._run_native([image], [sink])
        return dict.fromkeys(settings, sink.probs)
    chosen = {key: refine_windows(small, height, width, s) for key, s in settings.items()}
    unique = sorted({w for ws in chosen.values() for w in ws})
    sinks = [ProbabilityMapSink(h, w) for _, _, h, w in unique]
    if unique:
        predictor._run_native([np.ascontiguousarray(image[y : y + h, x : x + w]) for y, x, h, w in unique], sinks)
    native = {w: s.probs for w, s in zip(unique, sinks, strict=True)}
    out = {}
    for key, windows in chosen.items():  # fused by the predictor's own sink, as `wm predict` fuses them
        sink = ProbabilityMapSink(height, width)
        stream_upsampled(small, height, width, RefinedStripSink(sink, windows, [native[w] for w in windows]), height)
        out[key] = sink.probs
    return out


def score_all(samples, predictor, settings, bins: int, name: str) -> dict[tuple[float, float], SplitScores]:
    results = {key: SplitScores() for key in settings}
    t0 = time.perf_counter()
    for i, sample in enumerate(samples):
        image, truth = read_sample(sample)
        label = sample.has_watermark if sample.has_watermark is not None else bool(truth.any())
        for key, probs in maps_per_setting(image, predictor, settings).items():
            _add_image(results[key], sample, truth, probs, label, bins, 0)
        if (i + 1) % 100 == 0:
            print(f"{name}: {i + 1}/{len(samples)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return results


def workload_windows(corpus: Path, predictor, settings, count: int) -> dict[tuple[float, float], float]:
    """Mean native windows per 1024x768 screening photo (bench/screen.py's workload) per setting."""
    samples = real_clean_samples(corpus, "real_test")[:count]
    totals = dict.fromkeys(settings, 0)
    for sample in samples:
        with Image.open(sample.image) as im:
            image = np.asarray(cover_resize(im.convert("RGB"), (1024, 768)))
        small = run_global_views([image], predictor.params.predict.global_side, predictor._run_native)[0]
        for key, s in settings.items():
            totals[key] += len(refine_windows(small, *image.shape[:2], s))
    return {key: total / max(len(samples), 1) for key, total in totals.items()}


def report_rows(scored: dict, cost: dict, budgets: list[tuple[float, float]], bins: int, gate: bool,
                f1_tolerance: float = 0.0) -> list[dict]:  # fmt: skip
    """One row per (setting, real-photo budget pair): calibrated on val + real_val, scored on the rest."""
    rows = []
    for key in scored["val"]:
        for fp_budget, flagged_budget in budgets:
            cal = joint_thresholds(scored["val"][key], scored["real_val"][key], bins, fp_budget, flagged_budget,
                                   f1_tolerance)  # fmt: skip
            row = {"refine_threshold": key[0], "refine_min_scale": key[1], "max_real_fp_area": fp_budget,
                   "max_real_flagged": flagged_budget, "threshold": round(cal.threshold, 4),
                   "image_threshold": round(cal.image_threshold, 4), "windows_per_photo": cost.get(key)}  # fmt: skip
            for split in ("val", "test", HELDOUT_SPLIT):
                if split not in scored:  # a prepared set without a held-out split
                    row[f"{split}_f1"] = None
                    continue
                m = split_metrics(scored[split][key], cal.threshold, cal.image_threshold, bins, gate)
                row[f"{split}_f1"] = m["f1"]
                if split == "test":  # small marks (AI corner labels) are where downscaling loses most
                    row["test_small_f1"] = m["by_mark_area"]["lt_0.5pct"]["f1"]
            for split in ("real_val", "real_test"):
                m = real_clean_metrics(scored[split][key], cal.threshold, cal.image_threshold, bins, gate)
                row[f"{split}_fp_area"], row[f"{split}_flagged"] = m["fp_area"], m["n_flagged"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict], model: str, n_photos: int) -> str:
    head = ["refine_threshold", "refine_min_scale", "max_real_fp_area", "max_real_flagged", "threshold",
            "image_threshold", "val_f1", "test_f1", "test_small_f1", "test_heldout_f1", "real_val_fp_area",
            "real_val_flagged", "real_test_fp_area", "real_test_flagged", "windows_per_photo"]  # fmt: skip
    lines = [f"# Refinement sweep ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Model {model}; each row calibrated on val + real_val (wm evaluate's joint thresholds under the "
             f"row's budgets), scored on test, test_heldout and real_test (fp area: share of pixels; flagged: "
             f"photos with a mask; test_small_f1: test marks under 0.5% of their image). windows_per_photo: "
             f"native 512 px windows per 1024x768 screening photo ({n_photos} corpus test photos).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(h) is None else str(round(r[h], 5)) for h in head) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--params-extra", action="append", default=[])
    ap.add_argument("-S", "--set", action="append", default=[], dest="overrides")
    ap.add_argument("--model", default=str(ROOT / "models" / "wmdetect.pt"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "refine_sweep"))
    ap.add_argument("--workload", type=int, default=135, help="screening photos whose windows are counted")
    ap.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS), help="refine_threshold values")
    ap.add_argument("--min-scales", type=float, nargs="+", default=list(MIN_SCALES), help="refine_min_scale values")
    ap.add_argument("--budgets", nargs="+", default=None, metavar="FP_AREA:FLAGGED",
                    help="real-photo calibration budgets to compare (default: params' evaluate budgets)")
    ap.add_argument("--scores", default=None, help="pickle of per-image scores: reused if it exists, else written")
    args = ap.parse_args(argv)
    params = load_params(args.params, args.overrides, args.params_extra)
    ev, bins = params.evaluate, params.evaluate.threshold_grid
    budgets = ([tuple(float(v) for v in b.split(":")) for b in args.budgets] if args.budgets
               else [(ev.max_real_fp_area, ev.max_real_flagged)])  # fmt: skip
    cache = Path(args.scores) if args.scores else None
    if cache is not None and cache.is_file():
        with cache.open("rb") as f:
            scored, cost = pickle.load(f)
    else:
        configure_threads(params.base.threads)
        predictor = get_predictor(args.model, params, backend="torch")
        settings = settings_of(params.predict, predictor.backend.multiple, args.thresholds, args.min_scales)
        scored = {}
        for split in ("val", "test", HELDOUT_SPLIT):
            try:
                samples = load_split(params.paths.prepared, split)
            except WmError:
                if split != HELDOUT_SPLIT:
                    raise
                continue  # e.g. a large-image set prepared with n_test_heldout 0
            scored[split] = score_all(samples, predictor, settings, bins, split)
        for split in ("real_val", "real_test"):
            samples = real_clean_samples(params.paths.corpus, split, params.paths.corpus_native)
            scored[split] = score_all(samples, predictor, settings, bins, split)
        cost = workload_windows(Path(params.paths.corpus), predictor, settings, args.workload)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with cache.open("wb") as f:
                pickle.dump((scored, cost), f)
    rows = report_rows(scored, cost, budgets, bins, params.predict.gate_masks, params.evaluate.f1_tolerance)
    model = os.path.relpath(args.model, ROOT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"model": model, "rows": rows}, indent=1))
    (out / "sweep.md").write_text(markdown(rows, model, args.workload))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
