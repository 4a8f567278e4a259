"""What `bash bench/gpu.sh` needs on the device machine beyond its own image, gathered here (with registry access).

The device machine (no package registry; the working tree that travels is capped at 64 MiB) has PyTorch and
a fixed set of packages (DEVICE_PACKAGES, from /work/.library/device/KINDS.md as read on 2026-11-17). This:

1. lists the third-party distributions the script's Python imports (`--audit FILE`: the top-level modules a
   `QUICK=1 bash bench/gpu.sh` run recorded through bench/gpu_audit/sitecustomize.py) that the device lacks.
   The audit run blocks the optional ones (GPU_AUDIT_BLOCK, OPTIONAL below), so it also shows that the path
   works without them: mlflow (tracking is off on the device), pillow-heif (HEIC input only) and the Noto
   CJK wheel (15 MB; prepare then draws CJK text in the font pack's eight CJK faces only);
2. downloads their wheels for the device's Python (cp312, manylinux x86_64) into `.whl/`, at the versions
   installed here, without dependencies (each missing dependency is in the list itself);
3. copies the PP-OCRv4 text detector (the text_unet's encoder init, sha256-pinned) into
   `.cache/wmdetect/text_detector/`, where `wmcore.model.ocr_import.text_detector_onnx` looks first;
4. prints the size of what would travel (tracked + untracked-not-ignored files + the carried paths, less
   the tracked folders named by --leave-out) against the 64 MiB cap, the `carry` list for the device call,
   and how to leave those folders out of it (the recipe reads no native train views: prepare.native_share 0).

    QUICK=1 OUT=/tmp/gpuq PYTHON=.venv/bin/python PYTHONPATH=$PWD/bench/gpu_audit GPU_AUDIT=/tmp/gpu_audit.txt \
      GPU_AUDIT_BLOCK="mlflow pillow_heif noto_cjk_sans_otc" bash bench/gpu.sh
    .venv/bin/python bench/gpu_kit.py --audit /tmp/gpu_audit.txt --leave-out data/corpus-native-train
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wmcore.model.ocr_import import text_detector_onnx  # noqa: E402

CAP_MIB = 64
OPTIONAL = ("mlflow", "pillow_heif", "noto_cjk_sans_otc")  # GPU_AUDIT_BLOCK of the audit run: see the docstring
WHEELS = ROOT / ".whl"
CACHE = ROOT / ".cache" / "wmdetect"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]  # fmt: skip
# The device image's packages (KINDS.md, read on the machine on 2026-11-17), names normalised.
_DEVICE_IMAGE = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
"""
DEVICE_PACKAGES = set(_DEVICE_IMAGE.split())


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_distributions(modules: list[str]) -> dict[str, str]:
    """{distribution: version installed here} of the third-party `modules` whose distribution the device lacks.

    A namespace shared by several distributions (google: protobuf, google-auth, ...) counts as there when
    the device has one of them: the audit records top-level names only."""
    owners = md.packages_distributions()
    own = {"wmcore", "bench", "flows", "tasks", "tests"}
    out: dict[str, str] = {}
    for module in modules:
        if module in sys.stdlib_module_names or module in own or module.startswith("_"):
            continue
        dists = owners.get(module, [])
        if any(normalise(d) in DEVICE_PACKAGES for d in dists):
            continue
        out.update({normalise(d): md.version(d) for d in dists})
    return dict(sorted(out.items()))


def download(dists: dict[str, str]) -> list[Path]:
    WHEELS.mkdir(exist_ok=True)
    for stale in WHEELS.glob("*.whl"):  # two versions of one package stop the install there
        stale.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(WHEELS),
           *[f"{d}=={v}" for d, v in dists.items()]]  # fmt: skip
    subprocess.run(cmd, check=True)
    return sorted(WHEELS.glob("*.whl"))


def travelling_mib(carry: list[Path], leave_out: list[str]) -> float:
    """MiB of the tracked files, the untracked files git does not ignore (both outside `leave_out` folders), and
    the carried paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")  # fmt: skip
    names = [os.fsdecode(p) for p in listed if p]
    kept = [n for n in names if not any(n == f or n.startswith(f.rstrip("/") + "/") for f in leave_out)]
    total = sum((ROOT / n).stat().st_size for n in kept if (ROOT / n).is_file())
    for path in carry:
        total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return total / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audit", type=Path, required=True, help="top-level modules a QUICK gpu.sh run imported")
    ap.add_argument("--no-download", action="store_true", help="list only")
    ap.add_argument("--leave-out", nargs="*", default=[], metavar="FOLDER",
                    help="tracked folders the device run does not read, left out of the index for the call")
    args = ap.parse_args(argv)
    modules = sorted(set(args.audit.read_text().split()))
    dists = missing_distributions(modules)
    print(f"{len(modules)} top-level modules imported; distributions the device image lacks: "
          + (", ".join(f"{d}=={v}" for d, v in dists.items()) or "none"))  # fmt: skip
    carry = [CACHE / "text_detector"]
    onnx = text_detector_onnx(CACHE)
    print(f"text detector: {onnx.relative_to(ROOT)} ({onnx.stat().st_size / 2**20:.1f} MiB)")
    if dists and not args.no_download:
        wheels = download(dists)
        print(f"{len(wheels)} wheels in {WHEELS.relative_to(ROOT)}: " + ", ".join(w.name for w in wheels))
    if WHEELS.is_dir():
        carry.append(WHEELS)
    exclude = ROOT / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    if "/.whl/" not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join([*lines, "/.whl/"]) + "\n")  # ignored here, carried there
    size = travelling_mib(carry, args.leave_out)
    names = [str(p.relative_to(ROOT)) for p in carry]
    left = f", leaving out {' '.join(args.leave_out)}" if args.leave_out else ""
    print(f"would travel: {size:.1f} MiB of {CAP_MIB} (carry {names}{left})")
    for folder in args.leave_out:
        print(f"  before the call: git rm -r -q --cached {folder} && echo /{folder.strip('/')}/ >> .git/info/exclude\n"
              f"  after it:        git reset -q {folder} && sed -i '\\|^/{folder.strip('/')}/$|d' .git/info/exclude")
    if size > CAP_MIB:
        print("over the cap: leave out a tracked folder the run does not read (--leave-out)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
