"""The `wm` commands that run Prefect flows: `wm run`, `wm serve`, `wm screen`.

wmcore.cli parses their options and reaches these functions through the `wmdetect.commands` entry
points (pyproject.toml): the library never imports its orchestrator. Each takes wmcore.cli's parsed
arguments and returns the exit code, like the modules of wmcore.commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator

from flows.deployments import register_deployments, serve_deployments, write_prefect_yaml
from flows.pipeline import run_pipeline_cli
from flows.screening import run_screening
from wmcore.commands.common import EXIT_PARTIAL, VERBOSITY_ENV, load, output_folder
from wmcore.errors import WmError


@contextlib.contextmanager
def prefect_server_errors() -> Iterator[None]:
    """A Prefect API server that does not start or answer becomes a WmError saying so, not a traceback."""
    try:
        yield
    except RuntimeError as exc:
        if "Prefect API server" not in str(exc):
            raise
        timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
        raise WmError(
            f"{exc} (it was given {timeout} s: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS). Nothing ran; run "
            f"again when the machine is less loaded, allow more seconds, or point PREFECT_API_URL at a running server"
        ) from None


def run(args: argparse.Namespace) -> int:
    """`wm run`: the whole pipeline (the main job of `make run`)."""
    load(args)  # a bad params file or override fails here, before a flow run (and its server) starts
    if args.verbose:
        os.environ[VERBOSITY_ENV] = str(args.verbose)  # the stages DVC starts log as much
    with prefect_server_errors():
        return run_pipeline_cli(args)


def serve(args: argparse.Namespace) -> int:
    """`wm serve`: serve (or register, or write prefect.yaml for) the scheduled deployments."""
    p = load(args)
    if args.write_prefect_yaml:
        print(f"wrote {write_prefect_yaml(p, args.params, args.write_prefect_yaml)}")
        return 0
    if args.register_only:
        for dep_id in register_deployments(p, args.params):
            print(dep_id)
        return 0
    with prefect_server_errors():
        serve_deployments(p, args.params)
    return 0


def screen(args: argparse.Namespace) -> int:
    """`wm screen`: screen the new images of an inbox folder (local threads or a Dask cluster)."""
    if args.params_extra:
        raise WmError("wm screen: --params-extra is not supported (the flow reloads --params); use -S KEY=VALUE")
    params = load(args)  # a bad params file or override fails here, before a flow or a cluster starts
    output_folder(args, args.out or params.schedule.screening_out, "--out")
    with prefect_server_errors():
        result = run_screening(
            args.inbox, args.out, args.model, args.params, runner=args.runner, workers=args.workers,
            address=args.dask_address, chunk_size=args.chunk, overrides=args.set,
        )  # fmt: skip
    skipped = sum(1 for r in result["rows"] if r.get("status") != "ok")
    print(json.dumps({"screened": result["screened"], "with_watermark": result["with_watermark"], "skipped": skipped}))
    return EXIT_PARTIAL if skipped else 0
