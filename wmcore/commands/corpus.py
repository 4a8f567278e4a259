"""`wm corpus`: build paths.corpus and data/fonts from the pinned packages of data/corpus.yaml.

The DVC stage runs the same build as `python -m wmcore.data.corpus` (no params schema, no CLI).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wmcore.commands.common import load
from wmcore.data.corpus import SPEC_PATH, build


def run(args: argparse.Namespace) -> int:
    p = load(args)
    build(args.spec or SPEC_PATH, Path(p.paths.cache_dir) / "registry", Path(p.paths.corpus), args.only)
    return 0
