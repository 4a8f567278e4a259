"""`wm tune`: measure this machine and write the fastest safe settings (tune.output)."""

from __future__ import annotations

import argparse

from wmcore.commands.common import load
from wmcore.tune.run import report_table, run_tune


def run(args: argparse.Namespace) -> int:
    # Tuning starts from params.yaml as written: the tuned file it replaces must not bias the start.
    params = load(args, tuned=False)
    report = run_tune(params, args.params, knobs=args.knobs, remeasure=args.remeasure, write=not args.dry_run)
    print(report_table(report))
    return 0
