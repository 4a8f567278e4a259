"""`python -m wmcore.train`: the training entry point torchrun starts once per rank.

    torchrun --standalone --nproc-per-node 2 -m wmcore.train [--params FILE] [-S KEY=VALUE ...] [--resume]

Same options and behaviour as `wm train` (it is `wm [options] train`): configuration errors
end with one clear line and exit code 2. Under torchrun `train.nproc` is ignored (torchrun's
world size wins); without torchrun and with `train.nproc > 1` it relaunches itself as N ranks.
"""

from __future__ import annotations

import argparse
import sys

from wmcore import cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m wmcore.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--params-extra", action="append", default=[], metavar="FILE", help="override params file")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint of train_dir")
    ap.add_argument("-v", "--verbose", action="store_true", help="INFO log lines and the full JSON summary")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run `wm <options> train [--resume]` with the options of this command line; returns the exit code."""
    args = parse_args(argv)
    wm_argv = ["--params", args.params]
    for path in args.params_extra:
        wm_argv += ["--params-extra", path]
    for override in args.set:
        wm_argv += ["-S", override]
    wm_argv += ["-v"] * args.verbose + ["train"] + ["--resume"] * args.resume
    return cli.main(wm_argv)


if __name__ == "__main__":
    sys.exit(main())
