"""`wm bench` (bench/suite.py): verdict logic, section figures from known bench outputs, result files, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bench import screen, suite, suite_costs, suite_sections
from bench.suite import result_stem
from bench.suite_context import Figure, SuiteContext, figures_summary, judge
from wmcore.config import load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params(tmp_path):
    return load_params(ROOT / "params.yaml", tuned=False, overrides={"paths.cache_dir": str(tmp_path / "cache")})


def make_ctx(params, tmp_path, selected=suite.SECTIONS, **sizes) -> SuiteContext:
    return SuiteContext(params, ROOT / "params.yaml", True, tmp_path, {**suite.QUICK, **sizes}, list(selected))


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("value", "better", "plan", "target", "expected"),
    [
        (1.3, "higher", "training", 1.5, ("within plan", False)),
        (1.71, "higher", "training", 1.5, ("beyond plan", True)),
        (1.1, "higher", "training", 1.5, ("below plan", False)),
        (1.5, "higher", "training", 1.5, ("beyond plan", True)),  # exactly at the target counts as met
        (3.02, "higher", "inference", 3.0, ("beyond plan", True)),
        (0.61, "lower", "memory", 0.5, ("within plan", False)),
        (0.34, "lower", "memory", 0.5, ("beyond plan", True)),
        (0.8, "lower", "memory", 0.5, ("below plan", False)),
        (0.5, "lower", "memory", 0.5, ("within plan", True)),
        (0.05, "lower", None, 0.1, ("", True)),
        (0.2, "lower", None, 0.1, ("", False)),
        (None, "higher", "training", 1.5, ("", None)),  # not measured: no verdict
        (2.0, None, None, None, ("", None)),  # information only
    ],
)
def test_judge_against_plan_and_target(value, better, plan, target, expected):
    assert judge(value, better, plan, target) == expected


def test_figures_carry_their_verdicts_and_are_counted():
    figures = [
        Figure("train", "throughput", 1.7, better="higher", plan="training", target=1.5),
        Figure("infer", "torch", 0.9, better="higher", plan="inference", target=3.0),
        Figure("dataload", "best / naive", 8.0),
    ]
    assert [f.target_met for f in figures] == [True, False, None]
    assert figures[1].plan_verdict == "below plan"
    assert figures_summary(figures) == {"met": 1, "missed": 1, "no_target": 1}


@pytest.mark.parametrize(
    ("host", "quick", "expected"),
    [
        ("gpu-box", False, "gpu-box-2026-01-31"),
        ("my host/1", True, "my_host_1-2026-01-31-quick"),
        ("", False, "host-2026-01-31"),
    ],
)
def test_result_file_stem(host, quick, expected):
    from datetime import datetime

    assert result_stem(host, datetime(2026, 1, 31, 12, 0), quick) == expected


# --------------------------------------------------------------------------- sections from known bench outputs


TRAIN_JSON = {
    "config": {"steps": 40, "micro": 2, "accum": 4, "crop": 256},
    "naive": {"images_per_s": 1.71, "peak_rss_mb": 1334.0, "final_val_f1_best": 0.1008, "wall_s": 192.0},
    "optimized": {
        "images_per_s": 2.93,
        "peak_rss_mb": 821.0,
        "final_val_f1_best": 0.1208,
        "wall_s": 158.0,
        "switches": {},
    },
    "comparison": {"throughput_ratio": 1.713, "peak_memory_ratio": 0.615, "f1_delta": 0.02},
    "targets": {"f1_abs_delta_max": 0.01},
}


def test_train_section_judges_bench_train_output(params, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(suite_sections, "run_bench_script", lambda script, args, out: calls.append(args) or TRAIN_JSON)
    ctx = make_ctx(params, tmp_path)
    ctx.cache["prepared"] = tmp_path / "prepared"
    out = suite_sections.section_train(ctx)
    by_name = {f.name: f for f in out["figures"]}
    assert by_name["throughput optimized / naive"].plan_verdict == "beyond plan"
    assert by_name["throughput optimized / naive"].target_met is True
    assert (
        by_name["peak memory optimized / naive"].plan_verdict,
        by_name["peak memory optimized / naive"].target_met,
    ) == (
        "within plan",
        False,
    )
    assert by_name["val F1 difference at equal steps"].value == 0.02
    assert by_name["val F1 difference at equal steps"].target_met is False
    assert ["--prepared", str(tmp_path / "prepared")] == calls[0][-4:-2]


def infer_json(quality_naive: dict, quality_int8: dict) -> dict:
    return {
        "setup": {"images": 4, "size": 128, "model": "random weights", "threads": 2},
        "configs": {
            "naive": {
                "images_per_s": 2.0,
                "speedup": 1.0,
                "peak_rss_mb": 400.0,
                "work_mb": 10.0,
                "quality": quality_naive,
            },
            "torch": {
                "images_per_s": 5.0,
                "speedup": 2.5,
                "peak_rss_mb": 450.0,
                "work_mb": 60.0,
                "quality": quality_naive,
            },
            "onnx": {"error": "no onnxruntime"},
            "onnx_int8": {
                "images_per_s": 8.0,
                "speedup": 4.0,
                "peak_rss_mb": 390.0,
                "work_mb": 9.0,
                "quality": quality_int8,
            },
        },
        "equal_work_memory": {
            "size": 2048,
            "configs": {
                "naive": {"peak_rss_mb": 3000.0, "work_mb": 2600.0},
                "torch": {"peak_rss_mb": 1200.0, "work_mb": 500.0},
            },
        },  # fmt: skip
    }


@pytest.mark.parametrize(
    ("quality_naive", "quality_int8", "int8_delta"),
    [
        ({"f1_vs_naive": 1.0}, {"f1_vs_naive": 0.98}, 0.02),  # no ground truth: agreement with the naive masks
        ({"f1": 0.71}, {"f1": 0.705}, 0.005),  # ground truth: difference of the F1s
    ],
)
def test_infer_section_speedups_f1_deltas_and_memory(
    params, tmp_path, monkeypatch, quality_naive, quality_int8, int8_delta
):
    monkeypatch.setattr(suite_sections, "run_bench_script", lambda *a: infer_json(quality_naive, quality_int8))
    figs = {f.name: f for f in suite_sections.section_infer(make_ctx(params, tmp_path))["figures"]}
    assert figs["torch throughput / naive"].value == 2.5 and figs["torch throughput / naive"].target_met is False
    assert figs["onnx_int8 throughput / naive"].target_met is True
    assert figs["onnx throughput / naive"].value is None and "onnxruntime" in figs["onnx throughput / naive"].detail
    assert figs["onnx_int8 F1 delta vs naive"].value == pytest.approx(int8_delta)
    assert figs["onnx_int8 F1 delta vs naive"].target_met is (int8_delta <= params.tune.max_f1_delta)
    mem = figs["peak memory torch / naive, 2048 px"]
    assert mem.value == pytest.approx(0.4) and mem.plan_verdict == "beyond plan" and mem.target_met is True


FLATNESS = {
    "count_1000": {
        "images": 1000,
        "processed": 1000,
        "images_per_s": 20.0,
        "peak_rss_mb": 510.0,
        "work_beyond_buffers_mb": 170.0,
    },
    "count_100": {
        "images": 100,
        "processed": 100,
        "images_per_s": 20.0,
        "peak_rss_mb": 500.0,
        "work_beyond_buffers_mb": 160.0,
    },
    "size_8000x8000": {
        "images": 1,
        "processed": 1,
        "images_per_s": 0.01,
        "peak_rss_mb": 1400.0,
        "work_beyond_buffers_mb": 700.0,
    },
    "size_512x512": {
        "images": 1,
        "processed": 1,
        "images_per_s": 2.0,
        "peak_rss_mb": 600.0,
        "work_beyond_buffers_mb": 300.0,
    },
    "size_1024x1024": {
        "images": 1,
        "processed": 1,
        "images_per_s": 0.5,
        "peak_rss_mb": 1300.0,
        "work_beyond_buffers_mb": 600.0,
    },
    "whole_8000x8000": {
        "images": 1,
        "processed": 1,
        "images_per_s": 0.005,
        "peak_rss_mb": 2900.0,
        "work_beyond_buffers_mb": 700.0,
    },
    "size_4096x4096": {
        "images": 1,
        "processed": 1,
        "images_per_s": 0.05,
        "peak_rss_mb": 900.0,
        "work_beyond_buffers_mb": 650.0,
    },
    "oom_backoff_demo": {
        "images": 12,
        "processed": 12,
        "batch_backoffs": 2,
        "batch_size_final": 1,
        "batch_success_rate": 0.857,
        "host_memory_budget_mb": 73,
    },  # fmt: skip
    "tile_batch_bound_mb": 780.0,
}


def test_scaling_curves_are_ordered_by_size_and_judged(params, tmp_path):
    ctx = make_ctx(params, tmp_path)
    ctx.cache["flatness"] = FLATNESS
    out = suite_sections.section_scaling(ctx)
    assert [p["images"] for p in out["curves"]["count"]] == [100, 1000]
    assert [p["side"] for p in out["curves"]["side"]] == [512, 1024, 4096, 8000]  # by size; whole_ run not a point
    assert out["curves"]["side"][-1]["wall_s"] == 100.0
    figs = {f.name: f for f in out["figures"]}
    assert figs["peak RSS growth, 100 -> 1000 images"].value == pytest.approx(0.02)
    growth = figs["peak RSS growth, 1024 -> 8000 px"]  # from the 1024 px yardstick, not from 512 px
    assert growth.value == pytest.approx(1400 / 1300 - 1, abs=1e-3) and growth.target_met is True
    ctx.cache["flatness"] = {**FLATNESS, "size_1024x1024": {**FLATNESS["size_1024x1024"], "peak_rss_mb": 1000.0}}
    figs = {f.name: f for f in suite_sections.section_scaling(ctx)["figures"]}
    assert figs["peak RSS growth, 1024 -> 8000 px"].target_met is False  # +40%


def test_oom_section_counts_kept_images(params, tmp_path):
    ctx = make_ctx(params, tmp_path)
    ctx.cache["flatness"] = FLATNESS
    figs = suite_sections.section_oom(ctx)["figures"]
    assert (figs[0].value, figs[0].target_met) == (1.0, True)
    assert figs[1].value == 2.0


def test_dataload_section_measures_every_cache_on_a_tiny_dataset(params, tmp_path, tiny_prepared):
    ctx = make_ctx(params, tmp_path, crop=32, batch=2, loader_workers=[0], pin=[False], passes=2)
    ctx.cache["prepared"] = tiny_prepared
    out = suite_sections.section_dataload(ctx)
    assert [(r["cache"], r["workers"], r["uint8_batches"]) for r in out["rows"]] == [
        ("none", 0, False), ("ram", 0, False), ("mmap", 0, False), ("mmap", 0, True)]
    assert all(r["images_per_s"] > 0 and r["peak_pss_mb"] > 0 for r in out["rows"])
    assert len(out["figures"]) == 3 and all(f.value > 0 for f in out["figures"])


def test_contention_figures(params, tmp_path, monkeypatch):
    rows = [
        {"threads": 1, "competitor": False, "images_per_s": 10.0},
        {"threads": 2, "competitor": False, "images_per_s": 18.0},
        {"threads": 1, "competitor": True, "images_per_s": 9.0},
        {"threads": 2, "competitor": True, "images_per_s": 0.9},  # the collapse
        {"threads": 1, "competitor": True, "label": "auto, competitor counted", "images_per_s": 9.0},
    ]
    monkeypatch.setattr(suite_costs, "contention_rows", lambda *a: rows)
    monkeypatch.setattr("wmcore.runtime.device.available_cores", lambda: 2)
    figs = suite_costs.contention(make_ctx(params, tmp_path))["figures"]
    assert figs[0].value == pytest.approx(0.05)
    assert (figs[1].value, figs[1].target_met) == (1.0, True)


# --------------------------------------------------------------------------- the run, its files, MLflow


def fake_sections(monkeypatch):
    def good(ctx):
        return {"rows": [{"variant": "naive", "images_per_s": 1.0}, {"variant": "optimized", "images_per_s": 2.0}],
                "figures": [Figure("train", "throughput optimized / naive", 2.0, better="higher", plan="training",
                                   target=1.5)], "notes": ["made up"]}  # fmt: skip

    def curves(ctx):
        points = [{"images": n, "wall_s": n / 10, "peak_rss_mb": 500.0} for n in (10, 100)]
        sides = [{"side": s, "images": 1, "wall_s": s / 100, "peak_rss_mb": s / 2} for s in (512, 1024)]
        return {"rows": [], "figures": [], "notes": [], "curves": {"count": points, "side": sides}}

    def broken(ctx):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(suite_sections, "SECTION_FUNCTIONS", {"train": good, "scaling": curves, "oom": broken})
    monkeypatch.setattr("wmcore.runtime.device.cores_busy_elsewhere", lambda sample_s=0.3: 0.0)


def test_run_writes_schema_markdown_and_charts_and_keeps_going_after_a_failed_section(params, tmp_path, monkeypatch):
    fake_sections(monkeypatch)
    result = suite.run_suite(
        params, quick=True, sections=["train", "oom", "scaling"], out_dir=tmp_path, log_mlflow=False
    )
    assert result["complete"] is False and result["sections"]["oom"]["error"] == "disk on fire"
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    stem = result_stem(result["machine"]["host"], __import__("datetime").datetime.now(), True)
    assert files == sorted([f"{stem}.json", f"{stem}.md", f"{stem}-speedups.png", f"{stem}-scaling.png"])
    saved = json.loads((tmp_path / f"{stem}.json").read_text())
    assert {
        "schema",
        "mode",
        "date",
        "machine",
        "plan",
        "targets",
        "sections",
        "figures",
        "summary",
        "complete",
    } <= set(saved)
    fig = saved["figures"][0]
    assert {"section", "name", "value", "unit", "better", "plan", "target", "plan_verdict", "target_met"} <= set(fig)
    assert saved["summary"] == {"met": 1, "missed": 0, "no_target": 0}
    md = (tmp_path / f"{stem}.md").read_text()
    assert (
        "| train | throughput optimized / naive | 2 x naive | +20..40% (1.2-1.4x) | beyond plan | >= 1.5 | met |" in md
    )
    assert "**failed**: disk on fire" in md
    assert (tmp_path / f"{stem}-speedups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_section_is_a_clear_error(params):
    from wmcore.errors import WmError

    with pytest.raises(WmError, match="unknown section.*warp.*dataload"):
        suite.run_suite(params, sections=["warp"], log_mlflow=False)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A scratch sqlite MLflow store with a finished pipeline run that trained and one that skipped every stage."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("wmdetect", artifact_location=str(folder / "artifacts"))
    trained = client.create_run(experiment, start_time=1_000_000, tags={"step": "pipeline"})
    client.create_run(
        experiment, start_time=1_000_010, tags={"step": "train", "mlflow.parentRunId": trained.info.run_id}
    )
    client.set_terminated(trained.info.run_id, "FINISHED", end_time=1_000_000 + 540_000)
    skipped = client.create_run(experiment, start_time=2_000_000, tags={"step": "pipeline"})
    client.set_terminated(skipped.info.run_id, "FINISHED", end_time=2_000_000 + 4_000)
    return uri


def test_default_run_is_the_last_pipeline_run_that_trained(params, mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    seconds, source = suite_costs.last_pipeline_seconds(params)
    assert seconds == 540.0 and "trained" in source


def test_results_are_logged_to_the_benchmarks_experiment(params, tmp_path, mlflow_store, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    fake_sections(monkeypatch)
    result = suite.run_suite(params, quick=True, sections=["train"], out_dir=tmp_path, log_mlflow=True)
    client = MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(result["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "benchmarks"
    assert run.data.metrics["train/throughput optimized / naive"] == 2.0
    assert run.data.params["mode"] == "quick" and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        f"{run.info.run_name}.json",
        f"{run.info.run_name}.md",
    }


def test_unreachable_mlflow_is_skipped_with_a_warning(params, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    fake_sections(monkeypatch)
    p = params.model_copy(update={"tracking": params.tracking.model_copy(update={"probe_timeout_s": 1})})
    result = suite.run_suite(p, quick=True, sections=["train"], out_dir=tmp_path, log_mlflow=True)
    assert result["mlflow_run_id"] is None
    assert "cannot be used" in caplog.text
    assert len(list(tmp_path.glob("*-quick.json"))) == 1  # the results are written all the same


# --------------------------------------------------------------------------- screening


def screen_json() -> dict:
    photos = {
        "naive": {"images_per_s": 0.4, "peak_rss_mb": 900.0, "fp_area": 0.03, "masked_share": 0.9},
        "default": {"images_per_s": 5.0, "x_naive": 12.5, "x_ocr": 1.25, "peak_rss_mb": 520.0, "fp_area": 0.001},
        "ocr": {"images_per_s": 4.0, "peak_rss_mb": 360.0, "fp_area": 0.05, "masked_share": 0.8},
    }
    large = {"default": {"error": "boom"}}
    setup = {"images": 4, "size": "1024x768", "model": "m.pt", "load_before": 0.1}
    return {"photos": photos, "large": large, "setup": setup}


def test_screening_section_judges_default_against_naive_ocr_and_memory(params, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(suite_sections, "run_bench_script", lambda *a: calls.append(a) or screen_json())
    out = suite_sections.section_screening(make_ctx(params, tmp_path))
    figs = {f.name: f for f in out["figures"]}
    assert calls[0][0] == "screen.py" and "--model" in calls[0][1]
    assert figs["wm predict default / naive (photos, whole process)"].target_met is True  # 12.5 >= 10
    assert figs["wm predict default / ocr (photos, whole process)"].target_met is True  # 1.25 >= 1
    assert figs["wm predict default peak RSS (photos)"].target_met is False  # 520 > 500 MB
    assert figs["wm predict default mask area on clean real photos"].value == 0.001
    assert {(r["workload"], r["runner"]) for r in out["rows"]} == {
        ("photos", "naive"), ("photos", "default"), ("photos", "ocr"), ("large", "default")}  # fmt: skip
    assert next(r for r in out["rows"] if r["workload"] == "large")["error"] == "boom"


def test_screening_judges_the_ten_fold_target_against_the_previously_shipped_model(params, tmp_path, monkeypatch):
    r = screen_json()
    r["photos"]["naive_baseline"] = {"images_per_s": 0.25}
    r["photos"]["default"]["x_naive_baseline"] = 20.0
    calls = []
    monkeypatch.setattr(suite_sections, "run_bench_script", lambda *a: calls.append(a) or r)
    monkeypatch.setattr(suite_sections, "previous_shipped_model", lambda dest: dest)
    out = suite_sections.section_screening(make_ctx(params, tmp_path))
    args = calls[0][1]
    assert args[args.index("--baseline-model") + 1].endswith("previous-shipped.pt")
    fig = next(f for f in out["figures"] if "naive" in f.name)
    assert fig.name == "wm predict default / naive_baseline (photos, whole process)" and fig.value == 20.0
    assert "previously shipped UNet (git" in out["notes"][-1]
    # without that history: the current model's plain script, and the notes say so
    monkeypatch.setattr(suite_sections, "previous_shipped_model", lambda dest: None)
    calls.clear()
    out = suite_sections.section_screening(make_ctx(params, tmp_path))
    assert "--baseline-model" not in calls[0][1] and "not in this checkout's history" in out["notes"][-1]


def test_previous_shipped_model_reads_git_history_or_returns_none(tmp_path, monkeypatch):
    monkeypatch.setattr(suite_sections, "PREVIOUS_SHIPPED", ("HEAD", "params.yaml"))
    got = suite_sections.previous_shipped_model(tmp_path / "x" / "p.yaml")
    assert got == tmp_path / "x" / "p.yaml" and "predict:" in got.read_text()
    monkeypatch.setattr(suite_sections, "PREVIOUS_SHIPPED", ("0" * 40, "params.yaml"))
    assert suite_sections.previous_shipped_model(tmp_path / "y.pt") is None and not (tmp_path / "y.pt").exists()


def test_screen_mask_stats_reads_the_masks_a_runner_wrote(tmp_path):
    Image.new("L", (10, 10), 0).save(tmp_path / "a.mask.png")
    marked = Image.new("L", (10, 10), 0)
    marked.paste(255, (0, 0, 5, 2))  # 10 of 100 pixels
    marked.save(tmp_path / "b.mask.png")
    stats = screen.mask_stats(tmp_path)
    assert stats == {"fp_area": pytest.approx(0.05), "masked_share": 0.5}
    assert screen.mask_stats(tmp_path / "none") == {}
