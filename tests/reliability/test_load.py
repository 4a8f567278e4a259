"""Load: `wm screen` over thousands of small generated images; completes, memory flat, throughput reported.

The short run (200 images) is part of the normal suite; the 5,000-image soak runs in `make soak`
(`pytest -m slow`). The process's resident memory is sampled every 0.1 s: after the first
quarter of the images (model, Prefect client and caches loaded) it may not keep growing with the
number of images. Throughput is screened images per second between the first and the last
output file, printed and attached to the test report (`record_property`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
from prefect.settings import PREFECT_API_URL

from tests.reliability.generated import write_images
from tests.reliability.wm_process import PREDICT_SETS, WmProcess, assert_no_traceback
from wmcore.infer.screening import MANIFEST


def screen_and_watch(tmp_path: Path, checkpoint: Path, count: int) -> dict:
    """Screen `count` new 32x40 images in a `wm screen` process; returns rows, RSS samples (MiB) and timings."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    write_images(inbox, count)
    run = WmProcess(tmp_path, "screen", str(inbox), "--out", str(out), "--model", str(checkpoint),
                    sets=(*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}"),
                    PREFECT_API_URL=PREFECT_API_URL.value())  # fmt: skip
    watched, samples = psutil.Process(run.proc.pid), []  # (images done, RSS MiB)
    manifest = out / MANIFEST
    while run.proc.poll() is None:
        try:
            rss = watched.memory_info().rss / 2**20
            done = manifest.read_bytes().count(b"\n") if manifest.exists() else 0
        except (psutil.NoSuchProcess, FileNotFoundError):
            break
        samples.append((done, rss))
        time.sleep(0.1)
    assert run.wait(timeout=60) == 0, run.stderr[-3000:]
    assert_no_traceback(run.stderr)
    masks = sorted(out.glob("*.mask.png"), key=lambda p: p.stat().st_mtime)
    seconds = masks[-1].stat().st_mtime - masks[0].stat().st_mtime
    return {
        "out": out,
        "printed": json.loads(run.stdout.strip().splitlines()[-1]),
        "samples": samples,
        "images_per_s": (len(masks) - 1) / max(seconds, 1e-6),
    }


def assert_complete_and_flat(result: dict, count: int, max_growth_mb: float) -> float:
    """Exactly `count` rows everywhere; RSS growth after the first quarter at most max_growth_mb. Returns it."""
    out = result["out"]
    assert result["printed"] == {"screened": count, "with_watermark": result["printed"]["with_watermark"], "skipped": 0}
    csv_rows = (out / "results.csv").read_text().splitlines()[1:]
    assert len(csv_rows) == count
    names = [json.loads(line)["name"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(names) == len(set(names)) == count
    keys = [json.loads(line)["key"] for line in (out / MANIFEST).read_text().splitlines()]
    assert len(keys) == len(set(keys)) == count
    settled = [rss for done, rss in result["samples"] if done >= count // 4]
    assert len(settled) >= 3, "too few memory samples after the first quarter"
    growth = max(settled) - settled[0]
    assert growth <= max_growth_mb, f"RSS grew {growth:.0f} MiB over {count} images: {result['samples'][::20]}"
    return growth


def test_screening_200_images_short_load(tmp_path, checkpoint, prefect_harness, record_property):
    result = screen_and_watch(tmp_path, checkpoint, 200)
    growth = assert_complete_and_flat(result, 200, max_growth_mb=60)
    record_property("images_per_s", round(result["images_per_s"], 1))
    record_property("rss_growth_mb", round(growth, 1))
    print(f"screening 200 images: {result['images_per_s']:.1f} images/s, RSS growth {growth:.1f} MiB")


@pytest.mark.slow
def test_screening_5000_images_soak(tmp_path, checkpoint, prefect_harness, record_property):
    result = screen_and_watch(tmp_path, checkpoint, 5000)
    growth = assert_complete_and_flat(result, 5000, max_growth_mb=60)
    record_property("images_per_s", round(result["images_per_s"], 1))
    record_property("rss_growth_mb", round(growth, 1))
    print(f"screening 5000 images: {result['images_per_s']:.1f} images/s, RSS growth {growth:.1f} MiB")
