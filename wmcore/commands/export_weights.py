"""`wm export-weights`: write the shipped weights file (fp16) and its provenance JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from wmcore.commands.common import load
from wmcore.errors import WmError
from wmcore.pretrained import export_weights, gather_provenance


def run(args: argparse.Namespace) -> int:
    p = load(args)
    source = args.model or str(Path(p.paths.evaluate_dir) / "model.pt")
    out = args.out or p.paths.pretrained
    if not out:
        raise WmError("wm export-weights: no --out and paths.pretrained is null; say where the weights go")
    record = export_weights(source, out, gather_provenance(p, args.command_line, source), half=not args.fp32)
    test = record["metrics"].get("test", {})
    print(f"wrote {out} ({record['weights_bytes'] / 2**20:.1f} MiB, {record['precision']}; test F1 {test.get('f1')})")
    return 0
