"""`wm train`: train in this process; with train.nproc > 1 (and not yet under torchrun) relaunch as N DDP ranks.

Under torchrun every rank runs `python -m wmcore.cli ... train` and comes here: the process group
opens around the run and only rank 0 opens the MLflow run and prints the summary.
"""

from __future__ import annotations

import argparse

from wmcore.commands.common import load, log_prepared_input, output_folder, print_result, tracking
from wmcore.train import distributed as ddp
from wmcore.train.history import summary_table
from wmcore.train.loop import run_training


def run(args: argparse.Namespace) -> int:
    params = load(args)
    output_folder(args, params.paths.train_dir, "paths.train_dir")
    if params.train.nproc > 1 and not ddp.under_torchrun():
        ddp.check_local_ranks(params.train.nproc, params.base.device)
        argv = ddp.train_module_args(args.params, args.params_extra, args.set, args.resume, args.verbose)
        return ddp.launch_local_ranks(params.train.nproc, argv)
    # Rank 0 alone opens the MLflow run (and imports MLflow); the other ranks log to a NullLogger.
    with ddp.distributed_session(params.base.device) as ranks, tracking("train", params, ranks.is_main) as run_logger:
        summary = run_training(params, resume=args.resume, run_logger=run_logger)
        log_prepared_input(run_logger, params, "training")
    if ranks.is_main:
        where = f"-> {params.paths.train_dir}/ (best.pt, last.pt, history.json, metrics.json, loss_curve.png)"
        print_result(args, summary_table(summary), where, summary)
    return 0
