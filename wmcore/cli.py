"""The `wm` command line: one subcommand per pipeline step, each a thin call into wmcore.

DVC stage commands and Prefect tasks call the same `wmcore` functions as these
subcommands. Configuration errors and user errors end with one clear line and
exit code 2; skipped inputs end with exit code 3; an output folder that cannot be
written (checked before any work, or turned read-only mid-run) ends with one line
"cannot write to FOLDER: REASON; choose another OPTION" and exit code 4.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from wmcore.config import ConfigError, Params, load_params
from wmcore.errors import WmError
from wmcore.runtime.atomic import WRITE_DENIED_ERRNOS, OutputNotWritable, check_writable

EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_UNWRITABLE = 4

log = logging.getLogger("wmdetect")


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
    from wmcore.data.prepare import run_prepare

    params = _load(args)
    # The dataset is built in a hidden folder beside paths.prepared, then renamed into place.
    _output_folder(args, Path(params.paths.prepared).parent, "paths.prepared")
    stats = run_prepare(params)
    skipped = stats.get("backgrounds_skipped", {}).get("count", 0)
    print(json.dumps({"counts": stats.get("counts"), "backgrounds_used": stats.get("backgrounds_used")}))
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
    from wmcore.train.loop import run_training

    with ddp.distributed_session(params.base.device) as ranks, _rank_tracking(params, ranks.is_main) as run_logger:
        summary = run_training(params, resume=args.resume, run_logger=run_logger)
    if ranks.is_main:
        print(json.dumps(summary, default=str))
    return 0


def _rank_tracking(params: Params, is_main: bool):
    """The MLflow step run on rank 0, the only rank that logs (and imports MLflow); NullLogger on the others."""
    import contextlib

    from wmcore.tracking.sink import NullLogger

    if not is_main or not params.tracking.enabled:  # off: mlflow is not even imported (nor needed installed)
        return contextlib.nullcontext(NullLogger())
    from wmcore.tracking.mlflow_run import step_run

    return step_run("train", params)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wmcore.evaluate.run import evaluate_tracked

    params = _load(args)
    _output_folder(args, params.paths.evaluate_dir, "paths.evaluate_dir")
    metrics = evaluate_tracked(params, backend=args.backend, checkpoint=args.model)
    print(json.dumps(metrics.get("test", metrics), default=str))
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from wmcore.evaluate.mine import mine_hard_negatives

    params = _load(args)
    _output_folder(args, str(Path(params.paths.hard_negatives).parent), "paths.hard_negatives")
    summary = mine_hard_negatives(params, model=args.model)
    print(json.dumps(summary))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from wmcore.infer.folder import predict_inputs

    p = _load(args)
    out = args.out or p.paths.predict_dir
    _output_folder(args, out, "--out", check=False)  # predict_inputs checks it, after finding the inputs
    summary = predict_inputs(p, args.inputs or [p.paths.inbox], out, model=args.model, force=args.force)
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
    return run_pipeline_cli(args)


def cmd_export_weights(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wmcore.model.pretrained import export_weights, gather_provenance

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

    from wmcore.model.pretrained import check_differences, check_metrics, prepare_check_set, provenance_path
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
    from flows.deployments import register_deployments, serve_deployments

    p = _load(args)
    if args.register_only:
        for dep_id in register_deployments(p, args.params):
            print(dep_id)
        return 0
    serve_deployments(p, args.params)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from wmcore.runtime.tune import report_table, run_tune

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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    pr = sub.add_parser("predict", help="batched inference over files, folders and globs")
    pr.add_argument("inputs", nargs="*", help="image files, folders (recursive) or globs (default: paths.inbox)")
    pr.add_argument("--out", default=None, help="output folder (default: paths.predict_dir)")
    pr.add_argument("--model", default=None, help="checkpoint path or models:/NAME@ALIAS")
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
    sv.set_defaults(func=cmd_serve)
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
