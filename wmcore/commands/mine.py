"""`wm mine`: hard negatives, where a model marks the corpus's clean train photos."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wmcore.commands.common import load, output_folder
from wmcore.evaluate.mine import mine_hard_negatives


def run(args: argparse.Namespace) -> int:
    params = load(args)
    output_folder(args, str(Path(params.paths.hard_negatives).parent), "paths.hard_negatives")
    summary = mine_hard_negatives(params, model=args.model)
    print(json.dumps(summary))
    return 0
