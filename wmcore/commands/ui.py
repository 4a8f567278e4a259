"""`wm ui`: print the address of the experiment's runs table, then run the MLflow UI on this store (until Ctrl-C)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wmcore.commands.common import load
from wmcore.tracking.mlflow_run import runs_table_url, tracking_uri


def run(args: argparse.Namespace) -> int:
    p = load(args)
    url = runs_table_url(p, args.host, args.port)
    print(f"MLflow runs of experiment {p.tracking.experiment!r}: {url}", flush=True)
    if args.print_url:
        return 0
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    os.execv(mlflow_cli, [mlflow_cli, "ui", "--backend-store-uri", tracking_uri(p), "--host", args.host,
                          "--port", str(args.port), "--workers", "1"])  # fmt: skip
    return 0  # not reached: the UI replaced this process
