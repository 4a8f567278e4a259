"""bench/heldout_lineage.py: a phase's plan is recomputed from its params; names drawn are counted per phase."""

from __future__ import annotations

import json

from bench.heldout_lineage import lineage_table, main, phase_kept_out
from wmcore.data.kept_out import REGISTRIES


def _plan(**names) -> dict[str, list[str]]:
    return {r: [] for r in REGISTRIES} | names


def test_counts_what_each_phase_drew_and_what_none_did():
    heldout = _plan(fonts=["a", "b", "c"], styles=["tiled"])
    phases = {"1": (42, _plan(fonts=["a", "b", "c"], styles=["tiled"])), "3": (43, _plan(fonts=["b", "x"])),
              "4": (44, _plan(fonts=["b", "c"], styles=["tiled"]))}  # fmt: skip
    result, table = lineage_table(heldout, phases)
    assert result["phases"]["1"]["trained_on"] == dict.fromkeys(REGISTRIES, 0)
    assert result["phases"]["3"]["trained_on"] == {**dict.fromkeys(REGISTRIES, 0), "fonts": 2, "styles": 1}
    assert result["phases"]["4"]["trained_on"] == {**dict.fromkeys(REGISTRIES, 0), "fonts": 1}
    assert result["never_drawn"] == _plan(fonts=["b"])
    assert "| 3 drew | 43 | 2 | 0 | 1 | 0 | 0 |" in table and "| no phase drew | | 1 | 0 | 0 | 0 | 0 |" in table


def test_a_phase_on_the_datasets_own_seed_draws_none_of_its_heldout_names(tmp_path):
    """The recomputed plan of the seed a dataset was built with is the plan its stats.json stores."""
    seed, kept = phase_kept_out([])
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "stats.json").write_text(json.dumps({"heldout": kept}))
    other = tmp_path / "other.yaml"
    other.write_text(f"base: {{seed: {seed + 1}}}\n")
    assert main(["--prepared", str(tmp_path / "prep"), "--phase", "same=", "--phase", f"next={other}",
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    result = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert result["phases"]["same"]["trained_on"] == dict.fromkeys(REGISTRIES, 0)
    assert sum(result["phases"]["next"]["trained_on"].values()) > 0 and any(kept.values())
