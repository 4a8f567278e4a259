"""Which of an evaluation dataset's held-out names a chain of training phases drew (trained on).

A prepared dataset's test_heldout draws only the fonts, phrase kinds, styles, photos and procedural
kinds its held-out plan keeps out of train/val/test; the plan is drawn from `base.seed`
(wmcore.data.generator.plan_heldout). A fine-tune phase prepared on another seed holds out other names
and trains on the rest. This script recomputes each phase's plan from its params files (no sample is
generated) and counts, per registry, the dataset's held-out names each phase drew, and those no phase
drew. Checkpoints trained since 7 Dec record this themselves (meta["kept_out"], checked by `wm evaluate`);
this is for weights trained before.

    .venv/bin/python bench/heldout_lineage.py --prepared data/prepared-full \
        --phase "1=params-full.yaml,bench/ship-cpu.yaml" --phase "3=params-full.yaml,bench/ship-cpu.yaml,bench/ship-cpu-p3.yaml" \
        --out bench/results/heldout_lineage
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.eval_variants import write_probe  # noqa: E402
from wmcore.config import load_params  # noqa: E402
from wmcore.data.backgrounds import discover_backgrounds  # noqa: E402
from wmcore.data.generator import plan_heldout  # noqa: E402
from wmcore.data.kept_out import REGISTRIES, KeptOut, read_dataset_kept_out, trained_on  # noqa: E402


def phase_kept_out(params_files: list[str], params: str = "params.yaml") -> tuple[int, KeptOut]:
    """(seed, names the phase's prepared data kept out) for a phase given by its params files."""
    p = load_params(params, None, params_files)
    catalog = discover_backgrounds(p.prepare, p.paths.corpus, p.paths.corpus_native_train)
    plan = plan_heldout(p.prepare, p.base.seed, catalog)
    return p.base.seed, {r: sorted(getattr(plan, r)) for r in REGISTRIES}


def lineage_table(heldout: KeptOut, phases: dict[str, tuple[int, KeptOut]]) -> tuple[dict, str]:
    """Per phase and in all: how many of `heldout`'s names were drawn; the JSON result and a markdown table."""
    rows = {name: {"seed": seed, "trained_on": trained_on(heldout, kept)} for name, (seed, kept) in phases.items()}
    never = {r: sorted(set(heldout[r]).intersection(*(set(k[r]) for _, k in phases.values()))) for r in REGISTRIES}
    result = {"heldout_sizes": {r: len(heldout[r]) for r in REGISTRIES}, "phases": rows, "never_drawn": never}
    lines = ["| phase | seed | " + " | ".join(REGISTRIES) + " |", "|---|---|" + "---|" * len(REGISTRIES),
             "| held out (test_heldout) | | " + " | ".join(str(len(heldout[r])) for r in REGISTRIES) + " |"]
    lines += [f"| {name} drew | {row['seed']} | " + " | ".join(str(row["trained_on"][r]) for r in REGISTRIES) + " |"
              for name, row in rows.items()]
    lines.append("| no phase drew | | " + " | ".join(str(len(never[r])) for r in REGISTRIES) + " |")
    return result, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", required=True, help="the evaluation dataset (its stats.json holds the plan)")
    ap.add_argument("--phase", action="append", required=True, metavar="NAME=FILE,FILE",
                    help="a training phase: its name and the params files it was prepared with (after params.yaml)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    heldout, why = read_dataset_kept_out(args.prepared)
    if heldout is None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    phases = {}
    for spec in args.phase:
        name, _, files = spec.partition("=")
        phases[name] = phase_kept_out([f for f in files.split(",") if f])
    result, table = lineage_table(heldout, phases)
    write_probe(args.out, "lineage", {"prepared": args.prepared, **result}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
