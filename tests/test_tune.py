"""`wm tune`: choice logic on made-up measurements, history reuse, the tuned file through load_params."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from wmcore.config import ConfigError, load_params
from wmcore.errors import WmError
from wmcore.metrics import mask_f1
from wmcore.tune import plans as tune_plans
from wmcore.tune import run as tune
from wmcore.tune.run import TuneHistory, tune_knob, tuned_file_text
from wmcore.tune.trials import Choice, KnobPlan, Trial, choose
from wmcore.tune.workloads import median_split_delta

ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT = {"cpu": "test cpu", "cores": 2}


def trial(label: str, ips: float | None, delta: float | None = None, error: str | None = None) -> Trial:
    return Trial(label, {"predict.backend": label}, ips, delta, error=error)


# --------------------------------------------------------------------------- choice logic


@pytest.mark.parametrize(
    ("trials", "max_delta", "min_gain", "expected"),
    [
        # int8 is fastest but moves F1 by 0.02 > 0.01: the fastest safe one (onnx) wins
        ([trial("torch", 10), trial("onnx", 14, 0.0), trial("onnx-int8", 30, 0.02)], 0.01, 0.05, "onnx"),
        # a looser tolerance lets int8 through
        ([trial("torch", 10), trial("onnx", 14, 0.0), trial("onnx-int8", 30, 0.02)], 0.05, 0.05, "onnx-int8"),
        # 3% faster is within the noise guard of 5%: params.yaml's setting is kept
        ([trial("torch", 10), trial("onnx", 10.3, 0.0)], 0.01, 0.05, "torch"),
        # a delta exactly at the tolerance is allowed
        ([trial("torch", 10), trial("onnx-int8", 20, 0.01)], 0.01, 0.05, "onnx-int8"),
        # the current setting failed to run: the fastest safe candidate replaces it
        ([trial("torch", None, error="boom"), trial("onnx", 8, 0.0), trial("onnx-int8", 30, 0.5)], 0.01, 0.05, "onnx"),
        # nothing safe measured: params.yaml's setting stays
        ([trial("torch", None, error="boom"), trial("onnx-int8", 30, 0.5)], 0.01, 0.05, "torch"),
        # a failed fast candidate is never chosen
        ([trial("torch", 10), trial("onnx", None, error="no onnxruntime")], 0.01, 0.0, "torch"),
    ],
)
def test_choose_fastest_within_tolerance(trials, max_delta, min_gain, expected):
    choice = choose("predict_backend", trials, "torch", max_delta, min_gain)
    assert choice.chosen.label == expected
    assert choice.changed == (expected != "torch")


def test_choose_never_picks_an_accuracy_changing_setting_over_tolerance():
    trials = [trial("torch", 1.0), trial("onnx-int8", 1000.0, 0.0101)]
    choice = choose("predict_backend", trials, "torch", 0.01, 0.0)
    assert choice.chosen.label == "torch"
    assert "onnx-int8" in choice.reason and "accuracy" in choice.reason


# --------------------------------------------------------------------------- history


class CountingPlan:
    """A KnobPlan whose measurement counts its calls and returns made-up speeds."""

    def __init__(self, speeds: dict[str, float], context: dict | None = None, fail: set[str] = frozenset()):
        self.calls: list[str] = []
        self.speeds, self.fail = speeds, fail
        self.plan = KnobPlan("predict_batch", [(k, {"predict.batch_size": int(k)}) for k in speeds], "1",
                             context or {"model": "m1"}, self.measure)  # fmt: skip

    def measure(self, label: str, overrides: dict) -> Trial:
        self.calls.append(label)
        if label in self.fail:
            raise RuntimeError(f"candidate {label} broke")
        return Trial(label, overrides, self.speeds[label])


TUNE_CFG = load_params(ROOT / "params.yaml", tuned=False).tune


def test_history_reuse_skips_measuring_what_did_not_change(tmp_path):
    path = tmp_path / "history.json"
    first = CountingPlan({"1": 5.0, "2": 9.0, "4": 7.0})
    history = TuneHistory(path)
    choice = tune_knob(first.plan, history, FINGERPRINT, TUNE_CFG)
    history.save()
    assert first.calls == ["1", "2", "4"] and choice.chosen.label == "2"

    again = CountingPlan({"1": 0.1, "2": 0.1, "4": 99.0})  # would choose "4" if it measured
    choice = tune_knob(again.plan, TuneHistory(path), FINGERPRINT, TUNE_CFG)
    assert again.calls == [] and choice.chosen.label == "2"
    assert all(t.reused for t in choice.trials)


@pytest.mark.parametrize(
    ("fingerprint", "context", "remeasure"),
    [
        ({"cpu": "another cpu", "cores": 2}, {"model": "m1"}, False),  # other hardware
        (FINGERPRINT, {"model": "m2"}, False),  # another model
        (FINGERPRINT, {"model": "m1"}, True),  # --remeasure
    ],
)
def test_history_remeasures_when_something_changed(tmp_path, fingerprint, context, remeasure):
    history = TuneHistory(tmp_path / "history.json")
    tune_knob(CountingPlan({"1": 5.0, "2": 9.0}).plan, history, FINGERPRINT, TUNE_CFG)
    changed = CountingPlan({"1": 5.0, "2": 9.0}, context=context)
    tune_knob(changed.plan, history, fingerprint, TUNE_CFG, remeasure=remeasure)
    assert changed.calls == ["1", "2"]


def test_failed_candidates_are_not_remembered_and_never_chosen(tmp_path):
    history = TuneHistory(tmp_path / "history.json")
    plan = CountingPlan({"1": 5.0, "2": 50.0}, fail={"2"})
    choice = tune_knob(plan.plan, history, FINGERPRINT, TUNE_CFG)
    assert choice.chosen.label == "1"
    assert "broke" in choice.trials[1].error
    retry = CountingPlan({"1": 5.0, "2": 50.0})
    assert tune_knob(retry.plan, history, FINGERPRINT, TUNE_CFG).chosen.label == "2"
    assert retry.calls == ["2"]


def test_damaged_history_file_means_measure_again(tmp_path, caplog):
    path = tmp_path / "history.json"
    path.write_text("{not json")
    assert TuneHistory(path).entries == {}
    assert "unreadable tune history" in caplog.text


# --------------------------------------------------------------------------- the tuned file


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def made_up_choices() -> list[Choice]:
    stages = [{"until_epoch": 6, "crop": 128, "batch_size": 4}, {"until_epoch": 13, "crop": 256, "batch_size": 2}]
    onnx = Trial("onnx", {"predict.backend": "onnx"}, 14.0, 0.0)
    micro = Trial("accum 2", {"train.grad_accum_steps": 2, "train.progressive": stages}, 7.0)
    fp32 = Trial("fp32", {"train.amp": False}, 3.0)
    return [
        Choice("predict_backend", onnx, "torch", [Trial("torch", {"predict.backend": "torch"}, 10.0), onnx], "1.40x"),
        Choice("train_micro_batch", micro, "accum 1", [micro], "1.20x"),
        Choice("precision", fp32, "fp32", [fp32, Trial("bf16", {}, 9.0, 0.3)], "kept"),
    ]


def test_tuned_file_loads_through_load_params_in_the_documented_order(project):
    params_path = project / "params.yaml"
    tune.write_tuned_file(project / "params-tuned.yaml", made_up_choices(), ["header"], params_path)
    text = (project / "params-tuned.yaml").read_text()
    assert "# predict_backend: torch 10 img/s; onnx 14 img/s (F1 delta 0.000) -> onnx" in text
    assert "# precision: kept params.yaml's fp32" in text and "amp:" not in text  # kept = comment only

    p = load_params(params_path, overrides=["tune.apply=true"])  # an explicit opt-in
    assert p.predict.backend == "onnx"
    assert p.train.grad_accum_steps == 2 and [s.batch_size for s in p.train.progressive] == [4, 2]
    assert load_params(params_path).predict.backend == "torch"  # not applied unless asked for
    assert load_params(params_path, tuned=False, overrides=["tune.apply=true"]).predict.backend == "torch"
    on = ["tune.apply=true"]
    assert load_params(params_path, overrides=[*on, "predict.backend=onnx-int8"]).predict.backend == "onnx-int8"
    extra = project / "extra.yaml"
    extra.write_text("predict:\n  backend: torch\n")
    assert load_params(params_path, overrides=on, extra_files=[extra]).predict.backend == "torch"  # --params-extra wins
    assert load_params(params_path, extra_files=[project / "params-tuned.yaml"]).predict.backend == "onnx"  # named


def test_params_without_tuned_file_load_unchanged(project):
    assert load_params(project / "params.yaml").predict.backend == "torch"


@pytest.mark.parametrize(
    ("tuned_text", "in_message"),
    [
        ("tune:\n  apply: false\n", "must not set the tune group"),
        ("predict:\n  backend: tensorrt\n", "predict.backend"),
        ("predict:\n  batchsize: 4\n", "did you mean 'batch_size'"),
    ],
)
def test_bad_tuned_file_fails_naming_the_file_and_key(project, tuned_text, in_message):
    (project / "params-tuned.yaml").write_text(tuned_text)
    with pytest.raises(ConfigError) as err:
        load_params(project / "params.yaml", overrides=["tune.apply=true"])
    assert "params-tuned.yaml" in str(err.value) and in_message in str(err.value)


def test_invalid_tuned_values_are_not_left_behind(project):
    bad = Trial("batch 0", {"predict.batch_size": 0}, 99.0)
    choice = Choice("predict_batch", bad, "batch 4", [bad], "made up")
    with pytest.raises(WmError, match="do not validate"):
        tune.write_tuned_file(project / "params-tuned.yaml", [choice], [], project / "params.yaml")
    assert not (project / "params-tuned.yaml").exists()


def test_a_partial_run_keeps_the_other_knobs_choices_and_drops_its_own_old_ones(project):
    params_path, tuned = project / "params.yaml", project / "params-tuned.yaml"
    tune.write_tuned_file(tuned, made_up_choices(), [], params_path)
    threads = Trial("1 thread", {"base.threads": 1}, 9.0)
    tune.write_tuned_file(tuned, [Choice("threads", threads, "2 threads", [threads], "made up")], [], params_path)
    p = load_params(params_path, overrides=["tune.apply=true"])
    assert (p.base.threads, p.predict.backend, p.train.grad_accum_steps) == (1, "onnx", 2)
    assert "# earlier run: not measured this run" in tuned.read_text()
    # predict_backend tuned again, and now params.yaml's torch wins: its old key goes
    torch_wins = [Trial("torch", {"predict.backend": "torch"}, 20.0), Trial("onnx", {"predict.backend": "onnx"}, 14.0)]
    again = Choice("predict_backend", torch_wins[0], "torch", torch_wins, "kept")
    tune.write_tuned_file(tuned, [again], [], params_path)
    p = load_params(params_path, overrides=["tune.apply=true"])
    assert (p.base.threads, p.predict.backend, p.train.grad_accum_steps) == (1, "torch", 2)


def test_a_failed_write_leaves_the_earlier_tuned_file(project):
    params_path, tuned = project / "params.yaml", project / "params-tuned.yaml"
    tune.write_tuned_file(tuned, made_up_choices(), [], params_path)
    before = tuned.read_text()
    bad = Trial("batch 0", {"predict.batch_size": 0}, 99.0)
    with pytest.raises(WmError, match="predict.batch_size"):
        tune.write_tuned_file(tuned, [Choice("predict_batch", bad, "batch 4", [bad], "made up")], [], params_path)
    assert tuned.read_text() == before


def test_tuned_file_values_round_trip_as_yaml():
    text = tuned_file_text(made_up_choices(), ["a header line"])
    tree = yaml.safe_load(text)
    assert tree["predict"] == {"backend": "onnx"}
    assert tree["train"]["progressive"][1] == {"until_epoch": 13, "crop": 256, "batch_size": 2}
    assert text.startswith("# a header line\n")


# --------------------------------------------------------------------------- candidates and checks


@pytest.mark.parametrize(
    ("progressive", "batch", "accum", "expected"),
    [
        # 8 and 4 per step: split in 2 (4/2) but not in 4 (a micro-batch of 1 at 256 px)
        ([(6, 128, 8), (13, 256, 4)], 4, 1, {1: [8, 4], 2: [4, 2]}),
        ([], 8, 1, {1: [8], 2: [4], 4: [2]}),
        ([], 4, 2, {1: [8], 2: [4], 4: [2]}),  # global batch 8 = 4 x 2 accumulated
        ([], 3, 1, {1: [3]}),
    ],
)
def test_micro_batch_candidates_keep_the_global_batch(progressive, batch, accum, expected):
    stages = [{"until_epoch": u, "crop": c, "batch_size": b} for u, c, b in progressive]
    params = load_params(ROOT / "params.yaml", tuned=False, overrides={
        "train.progressive": stages, "train.batch_size": batch, "train.grad_accum_steps": accum})  # fmt: skip
    found = {}
    for _label, overrides in tune_plans.micro_batch_candidates(params):
        a = overrides["train.grad_accum_steps"]
        micros = (
            [s["batch_size"] for s in overrides["train.progressive"]] if stages else [overrides["train.batch_size"]]
        )
        found[a] = micros
    assert found == expected


@pytest.mark.parametrize(
    ("pred", "truth", "f1"),
    [
        ([1, 1, 0, 0], [1, 1, 0, 0], 1.0),
        ([1, 0, 0, 0], [1, 1, 0, 0], 2 / 3),
        ([0, 0], [0, 0], 1.0),
        ([1, 0], [0, 1], 0.0),
    ],
)
def test_mask_f1_known_answers(pred, truth, f1):
    import numpy as np

    assert mask_f1(np.array(pred, bool), np.array(truth, bool)) == pytest.approx(f1)


def test_median_split_delta_is_zero_for_the_same_decisions_and_grows_with_flips():
    import numpy as np

    ref = [np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)]
    assert median_split_delta([ref[0] * 0.9 + 0.05], ref) == 0.0  # monotone change: same order
    flipped = [1.0 - ref[0]]
    assert median_split_delta(flipped, ref) == 1.0


def test_unknown_knob_is_a_clear_error(project):
    params = load_params(project / "params.yaml", tuned=False)
    with pytest.raises(WmError, match="unknown knob.*threads"):
        tune.run_tune(params, project / "params.yaml", knobs=["warp_drive"])


# --------------------------------------------------------------------------- the whole run, tiny and real


def test_loader_knob_is_skipped_without_a_prepared_dataset(project):
    from types import SimpleNamespace

    params = load_params(project / "params.yaml", tuned=False, overrides={"paths.prepared": str(project / "none")})
    plan = tune_plans.plan_loader(SimpleNamespace(params=params, model=None, model_id="m"))
    assert plan.skip_reason.startswith("no prepared dataset at")
    choice = tune_knob(plan, TuneHistory(project / "h.json"), FINGERPRINT, params.tune)
    assert choice.trials == [] and not choice.changed and choice.reason.startswith("skipped")


def test_run_tune_on_a_tiny_model_writes_a_loadable_file_and_reuses_history(project, tiny_prepared, monkeypatch):
    monkeypatch.setattr("wmcore.runtime.device.cores_busy_elsewhere", lambda sample_s=0.3: 0.0)
    cache = project / "cache"
    overrides = {"model.arch": "unet", "model.base_width": 4, "model.depth": 2, "paths.cache_dir": str(cache),
                 "paths.prepared": str(tiny_prepared),
                 "paths.evaluate_dir": str(project / "none"), "paths.train_dir": str(project / "none"),
                 "tune.seconds_per_candidate": 0.5, "tune.image_side": 32, "tune.images": 2,
                 "train.progressive": [], "train.crop": 32, "train.batch_size": 2}  # fmt: skip
    params = load_params(project / "params.yaml", overrides=overrides, tuned=False)
    knobs = ["threads", "train_channels_last", "loader"]
    first = tune.run_tune(params, project / "params.yaml", knobs=knobs)
    assert [c.knob for c in first.choices] == knobs
    assert [t.label for t in first.choices[2].trials][:2] == ["0 workers", "1 worker, prefetch 2"]
    assert all(t.error is None and t.images_per_s > 0 for c in first.choices for t in c.trials)
    assert load_params(project / "params.yaml", overrides=overrides).model.base_width == 4  # the file validates
    entries = json.loads((cache / "tune_history.json").read_text())["entries"]
    measured = sum(len(c.trials) for c in first.choices)
    assert len(entries) == measured >= 4

    again = tune.run_tune(params, project / "params.yaml", knobs=knobs, write=False)
    assert all(t.reused for c in again.choices for t in c.trials)
    assert [c.chosen.label for c in again.choices] == [c.chosen.label for c in first.choices]


# --------------------------------------------------------------------------- thread sizing (wmcore.runtime.device)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("proc_line", "files", "expected"),
    [
        # cgroup v2: the limit sits on the pod, an ancestor of the container's own cgroup
        ("0::/kubepods/pod1/c1", {"kubepods/cpu.max": "200000 100000", "kubepods/pod1/c1/cpu.max": "max 100000"}, 2.0),
        ("0::/kubepods/pod1/c1", {"kubepods/cpu.max": "400000 100000", "kubepods/pod1/c1/cpu.max": "150000 100000"}, 1.5),
        # cgroup v1, cpu controller mounted with cpuacct; the root's -1 means no limit
        ("4:cpu,cpuacct:/docker/abc", {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
                                       "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
                                       "cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 0.5),
        ("0::/", {"cpu.max": "max 100000"}, None),
        ("0::/", {}, None),
    ],
)  # fmt: skip
def test_cgroup_quota_is_the_smallest_along_the_cgroup_path(tmp_path, proc_line, files, expected):
    from wmcore.runtime.device import cgroup_cpu_quota

    for rel, text in files.items():
        _write(tmp_path / "fs" / rel, text)
    _write(tmp_path / "cgroup", proc_line + "\n")
    assert cgroup_cpu_quota(tmp_path / "fs", tmp_path / "cgroup") == expected


@pytest.mark.parametrize(
    ("requested", "reserved", "cores", "expected"),
    [(0, 0, 2, 2), (0, 1, 2, 1), (0, 5, 2, 1), (3, 1, 2, 3), (0, 2, 16, 14), (0, -1, 4, 4)],
)
def test_thread_count_is_the_free_cores_minus_the_jobs_other_processes(requested, reserved, cores, expected):
    from wmcore.runtime.device import thread_count

    assert thread_count(requested, reserved, cores) == expected


@pytest.mark.parametrize(("affinity", "quota", "expected"), [(4, None, 4), (4, 1.5, 1), (2, 8.0, 2), (4, 0.3, 1)])
def test_available_cores_honours_affinity_and_quota(monkeypatch, affinity, quota, expected):
    from wmcore.runtime import device

    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(device, "cgroup_cpu_quota", lambda: quota)
    assert device.available_cores() == expected
