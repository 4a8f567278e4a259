"""Fusion rules at given thresholds on one prepared test split: each rule scored from the same passes.

`wm evaluate` chooses the fusion rule on val, whose images are 512-1024 px: a rule that only matters
for larger photos cannot be judged there. This scores chosen (rule, pixel threshold, image threshold)
settings - e.g. the calibrations `wm evaluate` produced - on another split, such as the 1,600-2,400 px
images of bench/results/refine_sweep_large (rebuild command in its README):

    python bench/rules_at_thresholds.py --prepared data/prepared-large --model models/wmdetect.pt \
        --setting refine:0.770833:0.997054 --setting refine_mean:0.666667:0.994657 --out OUT.json

Prints and writes pixel F1, precision, recall, image recall / precision and F1 on marks under 0.5%
of their image (gated masks, as `wm predict` writes them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wmcore.config import load_params  # noqa: E402
from wmcore.evaluate.report import split_metrics  # noqa: E402
from wmcore.evaluate.samples import load_split  # noqa: E402
from wmcore.evaluate.score import build_rule_maps_fn, score_maps  # noqa: E402
from wmcore.infer.working_scale import FUSION_RULES  # noqa: E402
from wmcore.runtime.device import configure_threads  # noqa: E402

KEYS = ("f1", "precision", "recall", "image_recall", "image_precision", "clean_fp_area")


def parse_setting(text: str) -> tuple[str, float, float]:
    rule, threshold, image_threshold = text.split(":")
    if rule not in FUSION_RULES:
        raise argparse.ArgumentTypeError(f"{rule!r}: not one of {', '.join(FUSION_RULES)}")
    return rule, float(threshold), float(image_threshold)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default=str(ROOT / "models" / "wmdetect.pt"))
    ap.add_argument("--setting", type=parse_setting, action="append", required=True, help="RULE:PIXEL:IMAGE")
    ap.add_argument("--params-extra", action="append", default=["params-full.yaml", "bench/ship-cpu.yaml"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    params = load_params(ROOT / "params.yaml", [f"paths.prepared={args.prepared}", "tracking.enabled=false"],
                         [ROOT / p for p in args.params_extra])  # fmt: skip
    configure_threads(params.base.threads)
    rules = tuple(dict.fromkeys(rule for rule, _, _ in args.setting))
    bins = params.evaluate.threshold_grid
    scored = score_maps(load_split(args.prepared, args.split), build_rule_maps_fn(params, Path(args.model), "torch"),
                        rules, bins, params.evaluate.batch_size, 0, name=args.split)  # fmt: skip
    out = {}
    for rule, threshold, image_threshold in args.setting:
        m = split_metrics(scored[rule], threshold, image_threshold, bins, params.predict.gate_masks)
        row = {k: m.get(k) for k in KEYS} | {"small_f1": m.get("by_mark_area", {}).get("lt_0.5pct", {}).get("f1")}
        out[f"{rule} {threshold:g}/{image_threshold:g}"] = row | {"n_images": m.get("n_images")}
        print(f"{rule} {threshold:g}/{image_threshold:g}: {row}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"prepared": args.prepared, "split": args.split, "model": args.model,
                                        "settings": out}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
