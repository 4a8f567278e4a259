"""`wm check-weights`: re-score the shipped weights on the check set; compare with (or --record into) their provenance."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from wmcore.commands.common import load
from wmcore.errors import WmError
from wmcore.pretrained import check_differences, check_metrics, prepare_check_set, provenance_path
from wmcore.runtime.atomic import write_text
from wmcore.runtime.report import read_json


def run(args: argparse.Namespace) -> int:
    p = load(args)
    if not (args.model or p.paths.pretrained):
        raise WmError("wm check-weights: no --model and paths.pretrained is null; name the weights file")
    weights = Path(args.model or p.paths.pretrained)
    record_path = provenance_path(weights)
    record = read_json(record_path)
    if not record:
        raise WmError(f"{record_path}: provenance JSON not found or unreadable (it is written by `wm export-weights`)")
    with tempfile.TemporaryDirectory() as tmp:
        measured = check_metrics(weights, prepare_check_set(p, Path(tmp) / "check"), p)
    if args.record:
        record["check_set"] = measured
        write_text(record_path, json.dumps(record, indent=2) + "\n")
        print(f"recorded in {record_path}: {measured}")
        return 0
    expected = record.get("check_set")
    if not expected:
        raise WmError(f"{record_path}: no check_set recorded; run `wm check-weights --record` once")
    off = check_differences(expected, measured, args.tolerance)
    print(json.dumps({"measured": measured, "recorded": expected, "differ": off}))
    return 1 if off else 0
