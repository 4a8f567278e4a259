"""`wm predict`: batched inference over files, folders and globs."""

from __future__ import annotations

import argparse
from pathlib import Path

from wmcore.commands.common import EXIT_PARTIAL, load, log_step, output_folder, tracking
from wmcore.errors import WmError
from wmcore.infer.folder import predict_inputs
from wmcore.runtime.report import predict_metrics

PREDICT_OPTION_KEYS = {"backend": "predict.backend", "tile_size": "predict.tile_size", "working_side": "predict.global_side"}


def run(args: argparse.Namespace) -> int:
    for option in ("threshold", "image_threshold"):
        value = getattr(args, option)
        if value is not None and not 0.0 < value < 1.0:
            raise WmError(f"--{option.replace('_', '-')} must be between 0 and 1 (exclusive), got {value}")
    chosen = [f"{key}={getattr(args, opt)}" for opt, key in PREDICT_OPTION_KEYS.items() if getattr(args, opt) is not None]
    args.set = [*args.set, *chosen]  # validated with the params: a bad value names the key
    p = load(args)
    out = args.out or p.paths.predict_dir
    output_folder(args, out, "--out", check=False)  # predict_inputs checks it, after finding the inputs
    with tracking("predict", p, out_dir=out) as run_logger:
        summary = predict_inputs(p, args.inputs or [p.paths.inbox], out, model=args.model, force=args.force,
                                 overlay=args.overlay, threshold=args.threshold, image_threshold=args.image_threshold)
        log_step(run_logger, "predict", predict_metrics(summary), [Path(out) / "summary.json"])
    return EXIT_PARTIAL if summary.get("skipped", 0) else 0
