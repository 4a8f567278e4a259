"""`wm params-doc`: write the params reference generated from the typed config."""

from __future__ import annotations

import argparse

from wmcore.paramsdoc import params_reference
from wmcore.runtime.atomic import write_text


def run(args: argparse.Namespace) -> int:
    write_text(args.out, params_reference())
    print(f"wrote {args.out}")
    return 0
