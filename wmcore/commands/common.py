"""What every `wm` command shares: loading params, declaring output folders, tracking a step, printing results."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from wmcore.config import Params, load_params
from wmcore.runtime.atomic import WRITE_DENIED_ERRNOS, OutputNotWritable, check_writable
from wmcore.tracking.runinfo import PARENT_RUN_ENV
from wmcore.tracking.sink import NullLogger, RunLogger

log = logging.getLogger("wmdetect")

EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_UNWRITABLE = 4

VERBOSITY_ENV = "WMDETECT_VERBOSITY"  # `wm -v run` passes its verbosity to the stages DVC starts
SPOOL_WARN_RECORDS = 20  # deferred tracking records waiting: the store has been refusing them for a while


def load(args: argparse.Namespace, tuned: bool = True) -> Params:
    """params.yaml (--params), the --params-extra files and -S overrides of the command line, validated.

    Which files were merged is kept on `args` (params_merged), for the command's summary to say.
    """
    params = load_params(args.params, overrides=args.set, extra_files=args.params_extra, tuned=tuned)
    args.params_merged = " + ".join(params.merged_files)
    return params


def tracking(step: str, params: Params, is_main: bool = True, out_dir: str | Path | None = None):
    """The MLflow run of a pipeline step (`step_run`); NullLogger on a non-zero DDP rank or with tracking off,
    when MLflow is not even imported (nor needed installed).

    `wm predict` with tracking.defer_predict, outside a pipeline run and in a process that has not loaded
    MLflow yet, records its run locally and a background process sends it (wmcore.tracking.deferred):
    its user does not wait the seconds MLflow's import and store take. A process that already has MLflow
    (a pipeline, a Prefect worker, the tests) logs inline: the import is paid there."""
    if not is_main or not params.tracking.enabled:
        return contextlib.nullcontext(NullLogger())
    inline = "mlflow" in sys.modules or os.environ.get(PARENT_RUN_ENV)  # MLflow paid for, or a pipeline's step
    if step == "predict" and params.tracking.defer_predict and not inline:
        # deferred on purpose: only a deferred predict run needs the spool (no cost to the other commands)
        from wmcore.tracking.deferred import deferred_step_run, pending_records, spool_dir

        if len(waiting := pending_records(spool_dir(params))) >= SPOOL_WARN_RECORDS:
            log.warning("%d tracking records wait in %s: the MLflow store has not taken them (see send.log there)",
                        len(waiting), spool_dir(params))  # fmt: skip
        return deferred_step_run(step, params, out_dir=out_dir)  # recorded now, sent to MLflow by a background process
    from wmcore.tracking.mlflow_run import step_run  # deferred on purpose: mlflow takes seconds to import

    return step_run(step, params, out_dir)


def log_step(run_logger: RunLogger, step: str, metrics: dict[str, float], files: list[Path]) -> None:
    """A step's metrics and result files (those that exist) on its run."""
    run_logger.log_metrics(metrics)
    for path in files:
        if path.is_file():
            run_logger.log_artifact(path, artifact_path=step)


def log_prepared_input(run_logger: RunLogger, params: Params, context: str) -> None:
    """paths.prepared's content fingerprint as a dataset input of the run (MLflow's Dataset column)."""
    if isinstance(run_logger, NullLogger):
        return
    from wmcore.tracking.mlflow_run import log_prepared_input as log_input  # deferred on purpose: mlflow is slow

    log_input(run_logger, params.paths.prepared, context)


def verbose(args: argparse.Namespace) -> bool:
    return args.verbose > 0 or int(os.environ.get(VERBOSITY_ENV, "0") or 0) > 0


def print_result(args: argparse.Namespace, table: str, where: str, full: dict[str, Any]) -> None:
    """A stage's summary table and where its outputs are; with -v also its full result as one JSON line."""
    print(table)
    if merged := getattr(args, "params_merged", None):
        print(f"params: {merged}")  # which files made these values (params-tuned.yaml only on request)
    print(where)
    if verbose(args):
        print(json.dumps(full, default=str))


def output_folder(args: argparse.Namespace, folder: str | Path, option: str, check: bool = True) -> None:
    """Declare an output folder of this command (`option` chooses another); prove it writable now.

    A write that fails there later, mid-run, is reported with the same one line (wmcore.cli.main).
    """
    if check:
        check_writable(folder, option)
    args.output_folders.append((Path(folder), option))


def unwritable(exc: OSError | OutputNotWritable, outputs: list[tuple[Path, str]]) -> OutputNotWritable | None:
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
