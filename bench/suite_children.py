"""The child processes of `wm bench`'s overhead section: each times an import and a little work from a bare start.

Run as `python bench/suite_children.py KIND SPEC_JSON`; prints one JSON line. This module imports only
the standard library at its top, so what a child times (Prefect, MLflow and our tracking module, imported
inside the child's function on purpose) is not already loaded when it starts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make wmcore importable
    sys.path.insert(0, str(ROOT))


def child_prefect(spec: dict[str, Any]) -> dict[str, Any]:
    """A Prefect flow of four no-op tasks, timed from the import (a `wm run` process pays all of it)."""
    start = time.perf_counter()
    from prefect import flow, task  # deferred on purpose: the import is part of what is timed
    from prefect.cache_policies import NO_CACHE

    @task(cache_policy=NO_CACHE)
    def stage(name: str) -> str:
        return name

    @flow(name="bench-overhead")
    def shape() -> list[str]:
        return [stage(s) for s in spec["stages"]]

    shape()
    return {"prefect_s": round(time.perf_counter() - start, 2)}


def child_mlflow(spec: dict[str, Any]) -> dict[str, Any]:
    """MLflow import + a parent run with one step run per tracked step (second round: the store exists already)."""
    start = time.perf_counter()
    # deferred on purpose: the import is part of what is timed
    from wmcore.config import load_params
    from wmcore.tracking.mlflow_run import parent_run, step_run  # deferred on purpose, as above

    import_s = time.perf_counter() - start
    params = load_params(ROOT / "params.yaml")
    rounds = []
    for attempt in range(2):  # the first round creates the scratch store's tables, as only a first run does
        start = time.perf_counter()
        with parent_run(params, f"overhead-{attempt}"):
            for step in spec["steps"]:
                with step_run(step, params, out_dir=spec["fallback"]) as run_logger:
                    run_logger.log_metrics({"x": 1.0}, step=0)
        rounds.append(time.perf_counter() - start)
    return {"mlflow_s": round(import_s + rounds[-1], 2), "mlflow_first_store_s": round(rounds[0], 2)}


CHILDREN = {"prefect": child_prefect, "mlflow": child_mlflow}


def main(argv: list[str] | None = None) -> int:
    kind, spec = argv or sys.argv[1:]
    print(json.dumps(CHILDREN[kind](json.loads(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
