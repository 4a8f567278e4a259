"""bench/gpu_kit.py: which distributions the device machine's image lacks, from the modules a run imported."""

from __future__ import annotations

import importlib.metadata as md
import subprocess

import pytest

from bench.gpu_kit import DEVICE_PACKAGES, ROOT, missing_distributions, normalise, travelling_mib


def test_only_third_party_distributions_the_device_lacks_are_listed() -> None:
    modules = ["numpy", "torch", "pydantic", "pydantic_core", "yaml", "os", "json", "_io", "wmcore", "bench", "google"]
    assert missing_distributions(modules) == {"pydantic": md.version("pydantic"),
                                              "pydantic-core": md.version("pydantic_core")}  # fmt: skip
    # google: protobuf's namespace too, which the device has (google-auth, also installed here, is not needed)


def test_names_are_compared_normalised() -> None:
    assert normalise("PyYAML") == "pyyaml" and normalise("typing_extensions") == "typing-extensions"
    assert {"pyyaml", "typing-extensions", "nvidia-ml-py", "scikit-image"} <= DEVICE_PACKAGES


def test_a_left_out_folder_no_longer_counts_towards_what_travels() -> None:
    fonts = ROOT / "data" / "fonts"
    tracked = subprocess.run(["git", "ls-files", "-z", "data/fonts"], cwd=ROOT, capture_output=True, check=True)
    size = sum((ROOT / p).stat().st_size for p in tracked.stdout.decode().split("\0") if p) / 2**20
    assert size > 1 and fonts.is_dir()
    whole, less = travelling_mib([], []), travelling_mib([], ["data/fonts"])
    assert whole - less == pytest.approx(size, abs=1e-6)
    assert travelling_mib([fonts], ["data/fonts"]) == pytest.approx(whole, abs=0.01)  # carried instead
