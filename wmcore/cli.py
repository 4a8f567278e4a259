"""The `wm` command line: one subcommand per pipeline step, each a thin call into wmcore.

DVC stage commands and Prefect tasks call the same `wmcore` functions as these subcommands.
This module only parses: each command's code is a module of wmcore.commands, imported by name
when that command runs (so a DVC stage depends on its own command only), or, for the commands
that run Prefect flows and `wm bench`, an entry point of the `wmdetect.commands` group
(pyproject.toml), which the library loads without importing its orchestrator.

Output is for people: progress bars, warnings and each command's summary table;
`-v` adds the INFO log lines (and each stage's full result as JSON), `-vv` DEBUG. Pipeline steps
(prepare, train, evaluate, predict) each log an MLflow run (wmcore.tracking.mlflow_run).
Configuration errors and user errors end with one clear line and
exit code 2; skipped inputs end with exit code 3; an output folder that cannot be
written (checked before any work, or turned read-only mid-run) ends with one line
"cannot write to FOLDER: REASON; choose another OPTION" and exit code 4.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from wmcore.commands.common import EXIT_PARTIAL, EXIT_UNWRITABLE, EXIT_USAGE, VERBOSITY_ENV, unwritable
from wmcore.errors import WmError
from wmcore.runtime.atomic import OutputNotWritable
from wmcore.schema import ConfigError

__all__ = ["EXIT_PARTIAL", "EXIT_UNWRITABLE", "EXIT_USAGE", "build_parser", "configure_logging", "entry", "main"]

log = logging.getLogger("wmdetect")

ENTRY_POINT_GROUP = "wmdetect.commands"  # commands whose code lies above wmcore: run, serve, screen (flows), bench
# Offline and quiet outside `make` too (the Makefile exports the same); a value the user set wins.
# The ephemeral Prefect server of `wm run` / `wm screen` gets 120 s to start instead of Prefect's 20: its first start
# in a new PREFECT_HOME builds its database, and on a loaded 2-core machine that once took longer (wm run failed).
OFFLINE_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}  # fmt: skip
CHATTY_LOGGERS = ("httpx", "httpcore")  # one INFO line per HTTP request (Prefect and MLflow clients): -vv only


def configure_logging(verbosity: int) -> None:
    """0: warnings and errors only (progress bars and summary tables are printed, not logged); 1: INFO; 2+: DEBUG.

    Below DEBUG the HTTP clients' per-request lines stay off; at 0 Prefect's and MLflow's own INFO lines
    too (their env settings, read when they are imported, unless the user set them). Telemetry is off
    (OFFLINE_DEFAULTS): offline, Prefect's would log an error per server start.
    """
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if verbosity < 2 else logging.DEBUG)
    if verbosity <= 0:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow may be imported already (read its env then)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per logged model file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wm", description="wmdetect: find text watermarks in images.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--params-extra", action="append", default=[], metavar="FILE", help="override params file, merged in order"
    )
    parser.add_argument(
        "-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override one key, e.g. train.epochs=3"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: INFO log lines and full JSON results; -vv: DEBUG"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("prepare", help="generate/import the versioned dataset").set_defaults(handler="wmcore.commands.prepare")
    co = sub.add_parser("corpus", help="build paths.corpus and data/fonts from the pinned packages of data/corpus.yaml")
    co.add_argument("--spec", default=None, help="corpus spec (default: data/corpus.yaml of the source tree)")
    co.add_argument("--only", choices=["images", "fonts"], default=None, help="build only the pictures or only the fonts")
    co.set_defaults(handler="wmcore.commands.corpus")
    mi = sub.add_parser("model-info", help="parameter count and FLOPs per image")
    mi.add_argument("--size", type=int, default=256, help="image side for the FLOPs figure, px")
    mi.set_defaults(handler="wmcore.commands.model_info")
    tr = sub.add_parser("train", help="train the UNet (optimizations switched in params.yaml)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint of train_dir")
    tr.set_defaults(handler="wmcore.commands.train")
    ev = sub.add_parser("evaluate", help="metrics, curves and overlays on the test split")
    ev.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default=None, help="inference backend")
    ev.add_argument("--model", default=None, help="checkpoint to evaluate (default: best of train_dir)")
    ev.set_defaults(handler="wmcore.commands.evaluate")
    mn = sub.add_parser("mine", help="hard negatives: where a model marks the corpus's clean train photos")
    mn.add_argument("--model", help="checkpoint or models:/ URI (default: paths.pretrained)")
    mn.set_defaults(handler="wmcore.commands.mine")
    pr = sub.add_parser(
        "predict",
        help="batched inference over files, folders and globs",
        description="Per image: <name>.mask.png (and <name>.overlay.jpg; <name>.prob.png with "
        "-S predict.save_probability=true); results.csv with the "
        "score, has_watermark (score >= image_threshold) and both thresholds; summary.json.",
    )
    pr.add_argument("inputs", nargs="*", help="image files, folders (recursive) or globs (default: paths.inbox)")
    pr.add_argument("--out", default=None, help="output folder (default: paths.predict_dir)")
    pr.add_argument("--model", default=None, help="checkpoint path or models:/NAME@ALIAS")
    pr.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default=None,
                    help="inference backend (default: predict.backend; onnx-int8 is the fast CPU path)")  # fmt: skip
    pr.add_argument("--threshold", type=float, default=None, metavar="P",
                    help="pixel probability at which a pixel is in the mask (default: the model's calibrated one)")  # fmt: skip
    pr.add_argument("--image-threshold", type=float, default=None, metavar="S",
                    help="score at which an image has a watermark (default: the model's calibrated one)")  # fmt: skip
    pr.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=None,
                    help="write <name>.overlay.jpg: the mask in red, region boxes and the score (default: "
                         "predict.save_overlay; auto = runs under predict.overlay_auto_images, 100, images)")  # fmt: skip
    pr.add_argument("--tile-size", type=int, default=None, metavar="PX",
                    help="largest input run whole; larger ones are cut into tiles (default: predict.tile_size)")  # fmt: skip
    pr.add_argument("--working-side", type=int, default=None, metavar="PX",
                    help="images larger than this also run downscaled to it, refined at native resolution where "
                         "marked (default: predict.global_side; 0 = native tiles only)")  # fmt: skip
    pr.add_argument("--force", action="store_true", help="redo images whose outputs already exist")
    pr.set_defaults(handler="wmcore.commands.predict")
    ex = sub.add_parser("export-weights", help="write the shipped weights file (fp16) and its provenance JSON")
    ex.add_argument("--model", default=None, help="evaluated checkpoint (default: <evaluate_dir>/model.pt)")
    ex.add_argument("--out", default=None, help="weights file (default: paths.pretrained)")
    ex.add_argument("--command-line", default="", help="the command that trained it, for the provenance")
    ex.add_argument("--fp32", action="store_true", help="keep fp32 tensors (default: fp16)")
    ex.set_defaults(handler="wmcore.commands.export_weights")
    ck = sub.add_parser("check-weights", help="re-score the shipped weights on a small generated check set")
    ck.add_argument("--model", default=None, help="weights file (default: paths.pretrained)")
    ck.add_argument("--record", action="store_true", help="write the measured numbers into the provenance JSON")
    ck.add_argument("--tolerance", type=float, default=0.02, help="largest accepted difference per number")
    ck.set_defaults(handler="wmcore.commands.check_weights")
    pd = sub.add_parser("params-doc", help="write the params reference generated from the typed config")
    pd.add_argument("--out", default="docs/params.md", help="output markdown file")
    pd.set_defaults(handler="wmcore.commands.params_doc")
    sv = sub.add_parser("serve", help="serve the scheduled deployments (nightly retrain, inbox screening)")
    sv.add_argument("--register-only", action="store_true", help="register with PREFECT_API_URL and exit")
    sv.add_argument("--write-prefect-yaml", nargs="?", const="prefect.yaml", default=None, metavar="FILE",
                    help="write the deployments, as params.yaml defines them, to FILE (prefect.yaml) for "
                         "`prefect deploy --all`, and exit")  # fmt: skip
    sv.set_defaults(entry_point="serve")
    ui = sub.add_parser("ui", help="the MLflow UI of this store, opening on the runs table of tracking.experiment")
    ui.add_argument("--host", default="127.0.0.1", help="address the UI listens on")
    ui.add_argument("--port", type=int, default=5000, help="port the UI listens on")
    ui.add_argument("--print-url", action="store_true", help="print the runs table's address and exit")
    ui.set_defaults(handler="wmcore.commands.ui")
    sc = sub.add_parser("screen", help="screen the new images of an inbox folder (local threads or a Dask cluster)")
    sc.add_argument("inbox", nargs="?", default=None, help="inbox folder (default: paths.inbox)")
    sc.add_argument("--out", default=None, help="output folder (default: schedule.screening_out)")
    sc.add_argument(
        "--model", default=None, help="checkpoint path or models:/NAME@ALIAS (default: schedule.screening_model)"
    )
    sc.add_argument(
        "--runner", choices=["local", "dask"], default=None, help="task runner (default: distributed.runner)"
    )
    sc.add_argument("--workers", type=int, default=None, help="dask: LocalCluster worker processes")
    sc.add_argument("--dask-address", default=None, metavar="ADDR", help="dask: running scheduler, tcp://HOST:PORT")
    sc.add_argument("--chunk", type=int, default=None, help="images per task (default: schedule.screening_chunk)")
    sc.set_defaults(entry_point="screen")
    tu = sub.add_parser("tune", help="measure this machine and write the fastest safe settings (tune.output)")
    tu.add_argument("--knobs", nargs="+", default=None, metavar="KNOB", help="tune only these (default: tune.knobs)")
    tu.add_argument("--remeasure", action="store_true", help="ignore the history of earlier measurements")
    tu.add_argument("--dry-run", action="store_true", help="measure and print, write no tuned file")
    tu.set_defaults(handler="wmcore.commands.tune")
    be = sub.add_parser("bench", help="every naive-vs-optimized comparison, scaling and contention (bench/suite.py)")
    be.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check in under 3 minutes")
    be.add_argument("--sections", nargs="+", default=None, metavar="SECTION", help="run only these sections")
    be.add_argument("--out", default=None, help="results folder (default: bench/results)")
    be.add_argument("--no-mlflow", action="store_true", help="do not log to the MLflow experiment `benchmarks`")
    be.set_defaults(entry_point="bench")
    run = sub.add_parser("run", help="the whole pipeline (the main job of `make run`)")
    run.set_defaults(entry_point="run")
    return parser


def command_function(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The `run(args)` of the command parsed: its wmcore.commands module, or its `wmdetect.commands` entry point."""
    if getattr(args, "handler", None):
        return importlib.import_module(args.handler).run
    found = entry_points(group=ENTRY_POINT_GROUP, name=args.entry_point)
    if not found:
        raise WmError(f"wm {args.command}: its entry point ({ENTRY_POINT_GROUP}: {args.entry_point}) is not installed; "
                      "reinstall the project (`make setup`, or `pip install -e .`)")  # fmt: skip
    return next(iter(found)).load()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.output_folders = []  # (folder, option) declared by the command (wmcore.commands.common.output_folder)
    configure_logging(max(args.verbose, int(os.environ.get(VERBOSITY_ENV, "0") or 0)))
    try:
        return int(command_function(args)(args) or 0)
    except (OutputNotWritable, OSError) as exc:  # before WmError: OutputNotWritable is one
        folder_error = unwritable(exc, args.output_folders)
        if folder_error is None:
            raise  # not about an output folder: a bug, with its traceback
        print(f"wm {args.command}: error: {folder_error}", file=sys.stderr)
        return EXIT_UNWRITABLE
    except (ConfigError, WmError) as exc:
        print(f"wm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"wm {args.command}: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
        return 130


def entry() -> None:
    code = main()
    # Interpreter teardown walks every object torch, mlflow and pydantic created: ~0.4 s of a
    # `wm predict` process on the 2-core CPU (`python -c "import torch"`: 1.6-2.0 s, 1.2-1.6 s with
    # this). Freezing moves them out of the exit-time collections; atexit handlers still run and
    # modules are still cleared, releasing what reference counting frees (files flushed and closed);
    # only objects in reference cycles are left to the OS, whose finalizers Python never promised at exit.
    gc.disable()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
