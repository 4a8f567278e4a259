"""Does the detector lose stroke edges to its working resolution? Predicting on an upscaled image, measured.

The text_unet decides "watermark" at 1/4 of the input's resolution and draws edges from a full-resolution
1x1 + depthwise 3x3 step; the shipped model's errors sit on marks' edges (bench/results/edge_errors) though
the labels are visible (bench/results/visibility). If resolution were the limit, running the whole
`wm predict` pipeline on the image upscaled by s (bicubic) and bringing the probabilities back (area
average) would recover edge pixels. Each scale is scored on every split once and calibrated as
`wm evaluate` calibrates (pixel and image thresholds jointly on val within the real-photo budgets, the
real photos upscaled alike); s = 1 must reproduce `wm evaluate`'s figures. Costs s^2 the inference.

    .venv/bin/python bench/upscale.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        -S paths.prepared=data/prepared-full --model models/wmdetect.pt --scales 1 1.5 --out bench/results/upscale
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.eval_variants import PLAIN, calibrated_row, load_probe_params, parser, score_variants  # noqa: E402
from wmcore.data.layout import HELDOUT_SPLIT  # noqa: E402
from wmcore.evaluate.score import ProbabilityFn, build_probability_fn  # noqa: E402
from wmcore.infer.enlarge import resize_image, shrink_map  # noqa: E402


def upscaled(predict: ProbabilityFn, scale: float) -> ProbabilityFn:
    """`predict` run on each image upscaled by `scale` (bicubic), its map brought back to the image's size (area
    average), as `predict.enlarge_below` does in the library; scale 1 is `predict` itself."""
    if scale == 1.0:
        return predict

    def run(images: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for image in images:  # one at a time: sizes differ after scaling
            h, w = image.shape[:2]
            probs = predict([resize_image(image, (round(h * scale), round(w * scale)))])[0]
            out.append(shrink_map(probs, (h, w)))
        return out

    return run


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5])
    args = ap.parse_args(argv)
    params = load_probe_params(args)
    load = os.getloadavg()
    base = build_probability_fn(params, args.model, "torch")
    rows = []
    for scale in args.scales:
        start = time.perf_counter()
        scored = score_variants(params, upscaled(base, scale), (PLAIN,), None, args.limit)
        cal, figures, _ = calibrated_row(params, {name: by[PLAIN] for name, by in scored.items()}, ("f1", "precision", "recall"))
        row = {"scale": scale, "seconds": round(time.perf_counter() - start, 1), "calibration": cal.as_metrics(), **figures}
        rows.append(row)
        print(json.dumps(row), flush=True)
    setup = {"model": str(args.model), "prepared": params.paths.prepared, "cores": os.cpu_count(),
             "load_before": round(load[0], 2)}  # fmt: skip
    lines = [json.dumps(setup), "", "| scale | pixel / image threshold | val F1 | test F1 (P / R) | held-out F1 | "
             "real_val area / flagged | real_test area / flagged | seconds (all splits) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        c, t, h = r["calibration"], r["test"], r.get(HELDOUT_SPLIT, {})
        rv, rt = r.get("real_val", {}), r.get("real_test", {})
        lines.append(f"| {r['scale']} | {c['threshold']:.4f} / {c['image_threshold']:.5f} | {c['val_f1']:.4f} | "
                     f"{t['f1']:.4f} ({t['precision']:.3f} / {t['recall']:.3f}) | {h.get('f1') or 0:.4f} | "
                     f"{100 * (rv.get('fp_area') or 0):.3f}% / {rv.get('n_flagged')} | "
                     f"{100 * (rt.get('fp_area') or 0):.3f}% / {rt.get('n_flagged')} | {r['seconds']} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "upscale.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    (args.out / "upscale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
