"""The end-of-run summary rows of `wm run` (wmcore.runtime.report)."""

from __future__ import annotations

from wmcore.runtime.report import console_table, summary_rows


def test_summary_names_the_exported_model_metrics_and_timings() -> None:
    results = {
        "evaluate": {
            "test": {"f1": 0.62, "ap": 0.98},
            "promotion": {"promoted": "pretrained", "candidate_test_f1": 0.5876, "pretrained_test_f1": 0.6238},
        },
        "train": {"steps": 91},
    }
    rows = dict(summary_rows(results, {"train": 191.3}, {"outputs": "results/evaluate"}))
    assert rows["test f1"] == "0.62" and rows["train steps"] == "91" and rows["time train (s)"] == "191.3"
    assert rows["exported model"] == "pretrained (test F1 fresh 0.5876 vs shipped 0.6238)"
    assert "exported model" in console_table(list(rows.items()))


def test_summary_without_promotion_has_no_exported_model_row() -> None:
    rows = dict(summary_rows({"evaluate": {"test": {"f1": 0.5}}}, {}, {}))
    assert "exported model" not in rows and rows["test f1"] == "0.5"
