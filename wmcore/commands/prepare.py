"""`wm prepare`: generate/import the versioned dataset (paths.prepared)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wmcore.commands.common import load, log_prepared_input, log_step, output_folder, print_result, tracking
from wmcore.data.prepare import run_prepare, summary_table
from wmcore.runtime.report import prepare_metrics


def run(args: argparse.Namespace) -> int:
    params = load(args)
    # The dataset is built in a hidden folder beside paths.prepared, then renamed into place.
    output_folder(args, Path(params.paths.prepared).parent, "paths.prepared")
    prepared = Path(params.paths.prepared)
    with tracking("prepare", params) as run_logger:
        stats = run_prepare(params)
        log_step(run_logger, "prepare", prepare_metrics(stats), [prepared / "stats.json", prepared / "contact_sheet.png"])
        log_prepared_input(run_logger, params, "prepared")
    where = f"prepared {stats['counts']['total']} samples in {prepared}/ (manifest.jsonl, stats.json, contact_sheet.png)"
    print_result(args, summary_table(stats), where, {"counts": stats.get("counts"),
                                                     "backgrounds_used": stats.get("backgrounds_used")})  # fmt: skip
    skipped = stats.get("backgrounds_skipped", {}).get("count", 0)
    if skipped:
        print(f"{skipped} background files skipped (reasons in stats.json)")
    bad_pairs = len((stats.get("import") or {}).get("skipped", []))
    if bad_pairs:  # still exit 0: a DVC stage must not fail on some unusable pairs of a user's dataset
        print(f"{bad_pairs} files of prepare.import_dir skipped (reasons in stats.json)")
    return 0
