"""The `wm` command line: one subcommand per pipeline step, each a thin call into wmcore.

DVC stage commands and Prefect tasks call the same `wmcore` functions as these
subcommands. Output is for people: progress bars, warnings and each command's summary table;
`-v` adds the INFO log lines (and each stage's full result as JSON), `-vv` DEBUG. Pipeline steps
(prepare, train, evaluate, predict) each log an MLflow run (wmcore.tracking.mlflow_run).
Configuration errors and user errors end with one clear line and
exit code 2; skipped inputs end with exit code 3; an output folder that cannot be
written (checked before any work, or turned read-only mid-run) ends with one line
"cannot write to FOLDER: REASON; choose another OPTION" and exit code 4.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from wmcore.config import ConfigError, Params, load_params
from wmcore.errors import WmError
from wmcore.runtime.atomic import WRITE_DENIED_ERRNOS, OutputNotWritable, check_writable
from wmcore.runtime.report import predict_metrics, prepare_metrics
from wmcore.tracking.sink import NullLogger, RunLogger

EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_UNWRITABLE = 4

log = logging.getLogger("wmdetect")

VERBOSITY_ENV = "WMDETECT_VERBOSITY"  # `wm -v run` passes its verbosity to the stages DVC starts
# Offline and quiet outside `make` too (the Makefile exports the same); a value the user set wins.
OFFLINE_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
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
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per logged model file


def _tracking(step: str, params: Params, is_main: bool = True, out_dir: str | Path | None = None):
    """The MLflow run of a pipeline step (`step_run`); NullLogger on a non-zero DDP rank or with tracking off,
    when MLflow is not even imported (nor needed installed)."""
    if not is_main or not params.tracking.enabled:
        return contextlib.nullcontext(NullLogger())
    from wmcore.tracking.mlflow_run import step_run  # deferred: mlflow takes seconds to import

    return step_run(step, params, out_dir)


def _log_step(run_logger: RunLogger, step: str, metrics: dict[str, float], files: list[Path]) -> None:
    """A step's metrics and result files (those that exist) on its run."""
    run_logger.log_metrics(metrics)
    for path in files:
        if path.is_file():
            run_logger.log_artifact(path, artifact_path=step)


def _log_prepared_input(run_logger: RunLogger, params: Params, context: str) -> None:
    """paths.prepared's content fingerprint as a dataset input of the run (MLflow's Dataset column)."""
    if isinstance(run_logger, NullLogger):
        return
    from wmcore.tracking.mlflow_run import log_prepared_input  # deferred: mlflow takes seconds to import

    log_prepared_input(run_logger, params.paths.prepared, context)


def _verbose(args: argparse.Namespace) -> bool:
    return args.verbose > 0 or int(os.environ.get(VERBOSITY_ENV, "0") or 0) > 0


def _print_result(args: argparse.Namespace, table: str, where: str, full: dict[str, Any]) -> None:
    """A stage's summary table and where its outputs are; with -v also its full result as one JSON line."""
    print(table)
    print(where)
    if _verbose(args):
        print(json.dumps(full, default=str))


def _load(args: argparse.Namespace) -> Params:
    return load_params(args.params, overrides=args.set, extra_files=args.params_extra)


def _output_folder(args: argparse.Namespace, folder: str | Path, option: str, check: bool = True) -> None:
    """Declare an output folder of this command (`option` chooses another); prove it writable now.

    A write that fails there later, mid-run, is reported with the same one line (see `main`).
    """
    if check:
        check_writable(folder, option)
    args.output_folders.append((Path(folder), option))


def _unwritable(exc: OSError | OutputNotWritable, outputs: list[tuple[Path, str]]) -> OutputNotWritable | None:
    """`exc` as the one-line error of an output folder of the command, naming its option; None if not one."""
    if isinstance(exc, OutputNotWritable):
        where, reason = exc.folder, exc.reason
    elif exc.errno in WRITE_DENIED_ERRNOS and exc.filename:
        where, reason = Path(exc.filename), f"{exc.strerror} ({exc.filename})"
    else:
        return None
    for folder, option in outputs:
        if where.absolute().is_relative_to(folder.absolute()):
            return OutputNotWritable(where if isinstance(exc, OutputNotWritable) else folder, reason, option)
    return exc if isinstance(exc, OutputNotWritable) else None


def cmd_prepare(args: argparse.Namespace) -> int:
    from wmcore.data.prepare import run_prepare, summary_table

    params = _load(args)
    # The dataset is built in a hidden folder beside paths.prepared, then renamed into place.
    _output_folder(args, Path(params.paths.prepared).parent, "paths.prepared")
    prepared = Path(params.paths.prepared)
    with _tracking("prepare", params) as run_logger:
        stats = run_prepare(params)
        _log_step(run_logger, "prepare", prepare_metrics(stats), [prepared / "stats.json", prepared / "contact_sheet.png"])
        _log_prepared_input(run_logger, params, "prepared")
    where = f"prepared {stats['counts']['total']} samples in {prepared}/ (manifest.jsonl, stats.json, contact_sheet.png)"
    _print_result(args, summary_table(stats), where, {"counts": stats.get("counts"),
                                                      "backgrounds_used": stats.get("backgrounds_used")})  # fmt: skip
    skipped = stats.get("backgrounds_skipped", {}).get("count", 0)
    if skipped:
        print(f"{skipped} background files skipped (reasons in stats.json)")
    bad_pairs = len((stats.get("import") or {}).get("skipped", []))
    if bad_pairs:  # still exit 0: a DVC stage must not fail on some unusable pairs of a user's dataset
        print(f"{bad_pairs} files of prepare.import_dir skipped (reasons in stats.json)")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    """Build paths.corpus (real pictures) and data/fonts (the font pack) from the pinned packages of the spec."""
    from pathlib import Path

    from wmcore.config import load_corpus_spec
    from wmcore.data.corpus import SPEC_PATH, build_corpus, build_fonts, summary_table

    p = _load(args)
    spec = load_corpus_spec(args.spec or SPEC_PATH)
    downloads = Path(p.paths.cache_dir) / "registry"
    if args.only in (None, "images"):
        summary = build_corpus(spec, downloads, Path(p.paths.corpus))
        print(summary_table(summary))
        print(f"corpus: {summary['pictures']} pictures, {summary['mib']} MiB; licenses: {summary['licenses']}")
    if args.only in (None, "fonts"):
        fonts = build_fonts(spec, downloads)
        print(f"fonts: {fonts['faces']} faces of {fonts['families']} families, {fonts['mib']} MiB; scripts {fonts['scripts']}")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from wmcore.model import build_model, count_flops, count_parameters

    p = _load(args)
    model = build_model(**p.model.model_dump())
    size = args.size
    flops = count_flops(model, size, size, p.model.in_channels)
    print(f"UNet depth={p.model.depth} base_width={p.model.base_width}")
    print(f"parameters: {count_parameters(model):,}")
    print(f"GFLOPs per {size}x{size} image: {flops / 1e9:.2f}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train in this process; with train.nproc > 1 (and not yet under torchrun) relaunch as N DDP ranks.

    Under torchrun every rank comes here: the process group opens around the run and only rank 0
    opens the MLflow run and prints the summary.
    """
    from wmcore.train import distributed as ddp

    params = _load(args)
    _output_folder(args, params.paths.train_dir, "paths.train_dir")
    if params.train.nproc > 1 and not ddp.under_torchrun():
        ddp.check_local_ranks(params.train.nproc, params.base.device)
        argv = ddp.train_module_args(args.params, args.params_extra, args.set, args.resume, args.verbose)
        return ddp.launch_local_ranks(params.train.nproc, argv)
    from wmcore.train.history import summary_table
    from wmcore.train.loop import run_training

    # Rank 0 alone opens the MLflow run (and imports MLflow); the other ranks log to a NullLogger.
    with ddp.distributed_session(params.base.device) as ranks, _tracking("train", params, ranks.is_main) as run_logger:
        summary = run_training(params, resume=args.resume, run_logger=run_logger)
        _log_prepared_input(run_logger, params, "training")
    if ranks.is_main:
        where = f"-> {params.paths.train_dir}/ (best.pt, last.pt, history.json, metrics.json, loss_curve.png)"
        _print_result(args, summary_table(summary), where, summary)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wmcore.evaluate.report import summary_table
    from wmcore.evaluate.run import evaluate_tracked

    params = _load(args)
    _output_folder(args, params.paths.evaluate_dir, "paths.evaluate_dir")
    metrics = evaluate_tracked(params, backend=args.backend, checkpoint=args.model)
    lines = [summary_table(metrics)]
    if promotion := metrics.get("promotion"):
        lines.append(f"exported: {promotion['promoted']} ({Path(metrics['source']).name}); test F1 "
                     f"{Path(promotion['candidate']).name} {promotion['candidate_test_f1']:.4f}, "
                     f"{Path(promotion['pretrained']).name} {promotion['pretrained_test_f1']:.4f}")  # fmt: skip
    if params.tracking.enabled and params.tracking.log_model:
        lines.append(f"MLflow champion: {'this model' if metrics.get('champion') else 'unchanged'}")
    where = f"-> {params.paths.evaluate_dir}/ (model.pt, metrics.json, scores.json, pr_curve.png, overlays.png)"
    _print_result(args, "\n".join(lines), where, metrics.get("test", metrics))
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from wmcore.evaluate.mine import mine_hard_negatives

    params = _load(args)
    _output_folder(args, str(Path(params.paths.hard_negatives).parent), "paths.hard_negatives")
    summary = mine_hard_negatives(params, model=args.model)
    print(json.dumps(summary))
    return 0


PREDICT_OPTION_KEYS = {"backend": "predict.backend", "tile_size": "predict.tile_size", "working_side": "predict.global_side"}


def cmd_predict(args: argparse.Namespace) -> int:
    from wmcore.infer.folder import predict_inputs

    for option in ("threshold", "image_threshold"):
        value = getattr(args, option)
        if value is not None and not 0.0 < value < 1.0:
            raise WmError(f"--{option.replace('_', '-')} must be between 0 and 1 (exclusive), got {value}")
    chosen = [f"{key}={getattr(args, opt)}" for opt, key in PREDICT_OPTION_KEYS.items() if getattr(args, opt) is not None]
    args.set = [*args.set, *chosen]  # validated with the params: a bad value names the key
    p = _load(args)
    out = args.out or p.paths.predict_dir
    _output_folder(args, out, "--out", check=False)  # predict_inputs checks it, after finding the inputs
    with _tracking("predict", p, out_dir=out) as run_logger:
        summary = predict_inputs(p, args.inputs or [p.paths.inbox], out, model=args.model, force=args.force,
                                 overlay=args.overlay, threshold=args.threshold, image_threshold=args.image_threshold)
        _log_step(run_logger, "predict", predict_metrics(summary), [Path(out) / "summary.json"])
    return EXIT_PARTIAL if summary.get("skipped", 0) else 0


def cmd_screen(args: argparse.Namespace) -> int:
    from flows.screening import run_screening

    if args.params_extra:
        raise WmError("wm screen: --params-extra is not supported (the flow reloads --params); use -S KEY=VALUE")
    params = _load(args)  # a bad params file or override fails here, before a flow or a cluster starts
    _output_folder(args, args.out or params.schedule.screening_out, "--out")
    result = run_screening(
        args.inbox, args.out, args.model, args.params, runner=args.runner, workers=args.workers,
        address=args.dask_address, chunk_size=args.chunk, overrides=args.set,
    )  # fmt: skip
    skipped = sum(1 for r in result["rows"] if r.get("status") != "ok")
    print(json.dumps({"screened": result["screened"], "with_watermark": result["with_watermark"], "skipped": skipped}))
    return EXIT_PARTIAL if skipped else 0


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import run_pipeline_cli

    _load(args)  # a bad params file or override fails here, before a flow run (and its server) starts
    if args.verbose:
        os.environ[VERBOSITY_ENV] = str(args.verbose)  # the stages DVC starts log as much
    return run_pipeline_cli(args)


def cmd_export_weights(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wmcore.pretrained import export_weights, gather_provenance

    p = _load(args)
    source = args.model or str(Path(p.paths.evaluate_dir) / "model.pt")
    out = args.out or p.paths.pretrained
    if not out:
        raise WmError("wm export-weights: no --out and paths.pretrained is null; say where the weights go")
    record = export_weights(source, out, gather_provenance(p, args.command_line, source), half=not args.fp32)
    test = record["metrics"].get("test", {})
    print(f"wrote {out} ({record['weights_bytes'] / 2**20:.1f} MiB, {record['precision']}; test F1 {test.get('f1')})")
    return 0


def cmd_check_weights(args: argparse.Namespace) -> int:
    """Re-score the shipped weights on the check set; compare with (or --record into) their provenance JSON."""
    import tempfile
    from pathlib import Path

    from wmcore.pretrained import check_differences, check_metrics, prepare_check_set, provenance_path
    from wmcore.runtime.atomic import write_text
    from wmcore.runtime.report import read_json

    p = _load(args)
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


def cmd_params_doc(args: argparse.Namespace) -> int:
    from wmcore.paramsdoc import params_reference
    from wmcore.runtime.atomic import write_text

    write_text(args.out, params_reference())
    print(f"wrote {args.out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.deployments import register_deployments, serve_deployments, write_prefect_yaml

    p = _load(args)
    if args.write_prefect_yaml:
        print(f"wrote {write_prefect_yaml(p, args.params, args.write_prefect_yaml)}")
        return 0
    if args.register_only:
        for dep_id in register_deployments(p, args.params):
            print(dep_id)
        return 0
    serve_deployments(p, args.params)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Print the address of the experiment's runs table, then run the MLflow UI on this store (until Ctrl-C)."""
    from wmcore.tracking.mlflow_run import runs_table_url, tracking_uri  # deferred: mlflow takes seconds to import

    p = _load(args)
    url = runs_table_url(p, args.host, args.port)
    print(f"MLflow runs of experiment {p.tracking.experiment!r}: {url}", flush=True)
    if args.print_url:
        return 0
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    os.execv(mlflow_cli, [mlflow_cli, "ui", "--backend-store-uri", tracking_uri(p), "--host", args.host,
                          "--port", str(args.port), "--workers", "1"])  # fmt: skip
    return 0  # not reached: the UI replaced this process


def cmd_tune(args: argparse.Namespace) -> int:
    from wmcore.tune.run import report_table, run_tune

    # Tuning starts from params.yaml as written: the tuned file it replaces must not bias the start.
    params = load_params(args.params, overrides=args.set, extra_files=args.params_extra, tuned=False)
    report = run_tune(params, args.params, knobs=args.knobs, remeasure=args.remeasure, write=not args.dry_run)
    print(report_table(report))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "suite.py").is_file():
        raise WmError(f"{root / 'bench' / 'suite.py'}: not found; `wm bench` runs from a source checkout")
    sys.path.insert(0, str(root))
    from bench.suite import run_suite

    result = run_suite(
        _load(args),
        args.params,
        quick=args.quick,
        sections=args.sections,
        out_dir=args.out,
        log_mlflow=not args.no_mlflow,
    )
    return 0 if result["complete"] else EXIT_PARTIAL


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

    sub.add_parser("prepare", help="generate/import the versioned dataset").set_defaults(func=cmd_prepare)
    co = sub.add_parser("corpus", help="build paths.corpus and data/fonts from the pinned packages of data/corpus.yaml")
    co.add_argument("--spec", default=None, help="corpus spec (default: data/corpus.yaml of the source tree)")
    co.add_argument("--only", choices=["images", "fonts"], default=None, help="build only the pictures or only the fonts")
    co.set_defaults(func=cmd_corpus)
    mi = sub.add_parser("model-info", help="parameter count and FLOPs per image")
    mi.add_argument("--size", type=int, default=256, help="image side for the FLOPs figure, px")
    mi.set_defaults(func=cmd_model_info)
    tr = sub.add_parser("train", help="train the UNet (optimizations switched in params.yaml)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint of train_dir")
    tr.set_defaults(func=cmd_train)
    ev = sub.add_parser("evaluate", help="metrics, curves and overlays on the test split")
    ev.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default=None, help="inference backend")
    ev.add_argument("--model", default=None, help="checkpoint to evaluate (default: best of train_dir)")
    ev.set_defaults(func=cmd_evaluate)
    mn = sub.add_parser("mine", help="hard negatives: where a model marks the corpus's clean train photos")
    mn.add_argument("--model", help="checkpoint or models:/ URI (default: paths.pretrained)")
    mn.set_defaults(func=cmd_mine)
    pr = sub.add_parser(
        "predict",
        help="batched inference over files, folders and globs",
        description="Per image: <name>.mask.png, <name>.prob.png (and <name>.overlay.jpg); results.csv with the "
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
    pr.set_defaults(func=cmd_predict)
    ex = sub.add_parser("export-weights", help="write the shipped weights file (fp16) and its provenance JSON")
    ex.add_argument("--model", default=None, help="evaluated checkpoint (default: <evaluate_dir>/model.pt)")
    ex.add_argument("--out", default=None, help="weights file (default: paths.pretrained)")
    ex.add_argument("--command-line", default="", help="the command that trained it, for the provenance")
    ex.add_argument("--fp32", action="store_true", help="keep fp32 tensors (default: fp16)")
    ex.set_defaults(func=cmd_export_weights)
    ck = sub.add_parser("check-weights", help="re-score the shipped weights on a small generated check set")
    ck.add_argument("--model", default=None, help="weights file (default: paths.pretrained)")
    ck.add_argument("--record", action="store_true", help="write the measured numbers into the provenance JSON")
    ck.add_argument("--tolerance", type=float, default=0.02, help="largest accepted difference per number")
    ck.set_defaults(func=cmd_check_weights)
    pd = sub.add_parser("params-doc", help="write the params reference generated from the typed config")
    pd.add_argument("--out", default="docs/params.md", help="output markdown file")
    pd.set_defaults(func=cmd_params_doc)
    sv = sub.add_parser("serve", help="serve the scheduled deployments (nightly retrain, inbox screening)")
    sv.add_argument("--register-only", action="store_true", help="register with PREFECT_API_URL and exit")
    sv.add_argument("--write-prefect-yaml", nargs="?", const="prefect.yaml", default=None, metavar="FILE",
                    help="write the deployments, as params.yaml defines them, to FILE (prefect.yaml) for "
                         "`prefect deploy --all`, and exit")  # fmt: skip
    sv.set_defaults(func=cmd_serve)
    ui = sub.add_parser("ui", help="the MLflow UI of this store, opening on the runs table of tracking.experiment")
    ui.add_argument("--host", default="127.0.0.1", help="address the UI listens on")
    ui.add_argument("--port", type=int, default=5000, help="port the UI listens on")
    ui.add_argument("--print-url", action="store_true", help="print the runs table's address and exit")
    ui.set_defaults(func=cmd_ui)
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
    sc.set_defaults(func=cmd_screen)
    tu = sub.add_parser("tune", help="measure this machine and write the fastest safe settings (tune.output)")
    tu.add_argument("--knobs", nargs="+", default=None, metavar="KNOB", help="tune only these (default: tune.knobs)")
    tu.add_argument("--remeasure", action="store_true", help="ignore the history of earlier measurements")
    tu.add_argument("--dry-run", action="store_true", help="measure and print, write no tuned file")
    tu.set_defaults(func=cmd_tune)
    be = sub.add_parser("bench", help="every naive-vs-optimized comparison, scaling and contention (bench/suite.py)")
    be.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check in under 3 minutes")
    be.add_argument("--sections", nargs="+", default=None, metavar="SECTION", help="run only these sections")
    be.add_argument("--out", default=None, help="results folder (default: bench/results)")
    be.add_argument("--no-mlflow", action="store_true", help="do not log to the MLflow experiment `benchmarks`")
    be.set_defaults(func=cmd_bench)
    run = sub.add_parser("run", help="the whole pipeline (the main job of `make run`)")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.output_folders = []  # (folder, option) declared by the command (_output_folder)
    configure_logging(max(args.verbose, int(os.environ.get(VERBOSITY_ENV, "0") or 0)))
    try:
        return int(args.func(args) or 0)
    except (OutputNotWritable, OSError) as exc:  # before WmError: OutputNotWritable is one
        unwritable = _unwritable(exc, args.output_folders)
        if unwritable is None:
            raise  # not about an output folder: a bug, with its traceback
        print(f"wm {args.command}: error: {unwritable}", file=sys.stderr)
        return EXIT_UNWRITABLE
    except (ConfigError, WmError) as exc:
        print(f"wm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"wm {args.command}: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
