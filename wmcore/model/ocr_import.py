"""Load PP-OCRv4's mobile text-detector weights (ONNX) into TextUNet's encoder, FPN and DB head.

The ONNX file is `ch_PP-OCRv4_det_infer.onnx` from the `rapidocr-onnxruntime` wheel (Apache-2.0).
Its weights are Constant nodes in graph order; this module walks them in the order the graph uses
them, folds the few remaining BatchNorms into their convs, and assigns them to TextUNet's
parameters, checking every shape. `TEXT_DETECTOR` pins the wheel and the file (sha256) so a
fetched copy is verified; `check_against_onnx` compares our PyTorch text map with ONNX Runtime's.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from wmcore.errors import WmError
from wmcore.hashing import file_sha256
from wmcore.model.text_unet import TextUNet

TEXT_DETECTOR = {
    "package": "rapidocr-onnxruntime",
    "version": "1.4.4",
    "wheel": "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "wheel_sha256": "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    "url": "https://files.pythonhosted.org/packages/ba/12/1e5497183bdbe782dbb91bad1d0d2297dba4d2831b2652657f7517bfc6df/"
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "member": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "sha256": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "license": "Apache-2.0 (PaddleOCR PP-OCRv4 det model, packaged by RapidOCR)",
}
BN_EPS = 1e-5
log = logging.getLogger(__name__)


def text_detector_onnx(cache_dir: str | Path) -> Path:
    """The pinned PP-OCRv4 det ONNX file, sha256-checked: from the cache, an installed rapidocr, or PyPI.

    The wheel is downloaded once (about 15 MB) into `cache_dir`; a file whose checksum differs from
    the pin is refused with a WmError naming it.
    """
    cache = Path(cache_dir) / "text_detector"
    target = cache / Path(TEXT_DETECTOR["member"]).name
    if target.is_file() and file_sha256(target) == TEXT_DETECTOR["sha256"]:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    installed = Path(spec.origin).parent / "models" / target.name if spec and spec.origin else None
    if installed is not None and installed.is_file() and file_sha256(installed) == TEXT_DETECTOR["sha256"]:
        shutil.copyfile(installed, target)
        return target
    wheel = cache / TEXT_DETECTOR["wheel"]
    if not (wheel.is_file() and file_sha256(wheel) == TEXT_DETECTOR["wheel_sha256"]):
        log.info("fetching %s %s (text-detector weights) from PyPI", TEXT_DETECTOR["package"], TEXT_DETECTOR["version"])
        partial = wheel.with_suffix(".part")
        try:
            with urllib.request.urlopen(TEXT_DETECTOR["url"], timeout=120) as response, partial.open("wb") as fh:
                shutil.copyfileobj(response, fh)
        except OSError as exc:
            raise WmError(
                f"cannot download {TEXT_DETECTOR['url']}: {exc}; put {TEXT_DETECTOR['wheel']} into {cache} "
                "or set train.init_encoder: null"
            ) from None
        if file_sha256(partial) != TEXT_DETECTOR["wheel_sha256"]:
            partial.unlink()
            raise WmError(f"{TEXT_DETECTOR['url']}: sha256 differs from the pinned {TEXT_DETECTOR['wheel_sha256']}")
        partial.replace(wheel)
    with zipfile.ZipFile(wheel) as archive, archive.open(TEXT_DETECTOR["member"]) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    if file_sha256(target) != TEXT_DETECTOR["sha256"]:
        target.unlink()
        raise WmError(f"{wheel}: {TEXT_DETECTOR['member']} differs from the pinned sha256 {TEXT_DETECTOR['sha256']}")
    return target


def onnx_weights(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """(name, array) of every weight tensor, in the order the graph's nodes first use them."""
    import onnx  # deferred on purpose: only model import needs the protobuf reader
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises protobuf's DecodeError, OSError, ...
        raise WmError(f"{path}: not a readable ONNX model: {exc}") from None
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    ordered, seen = [], set()
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        for name in node.input:
            if name in tensors and name not in seen and not name.startswith("p2o.helper"):
                seen.add(name)
                ordered.append((name, tensors[name]))
    return ordered


def _fold_bn(weight: np.ndarray, bias: np.ndarray | None, bn: list[np.ndarray], out_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold BatchNorm (scale, shift, mean, var) that follows a conv into its weight and bias."""
    scale, shift, mean, var = bn
    if not all(v.shape == (weight.shape[out_axis],) for v in bn) or np.any(var < 0):
        raise ValueError(f"BatchNorm vectors {[v.shape for v in bn]} do not fit a conv weight {weight.shape}")
    k = scale / np.sqrt(var + BN_EPS)
    shape = [1] * weight.ndim
    shape[out_axis] = -1
    b = np.zeros_like(mean) if bias is None else bias.reshape(-1)
    return weight * k.reshape(shape), (b - mean) * k + shift


def _param_order(model: TextUNet) -> Iterator[tuple[str, torch.Tensor]]:
    """TextUNet's imported parameters in the order the ONNX graph uses their tensors."""
    named = dict(model.named_parameters())
    for name, p in model.backbone.named_parameters():
        if not name.startswith("stem."):
            yield f"backbone.{name}", p
    for group in ("lateral", "smooth"):  # the graph runs each FPN list from 1/32 down to 1/4
        for i in reversed(range(len(getattr(model.fpn, group)))):
            prefix = f"fpn.{group}.{i}."
            yield from ((n, named[n]) for n in named if n.startswith(prefix))


class _Tensors:
    """The detector's weight tensors read front to back."""

    def __init__(self, weights: list[tuple[str, np.ndarray]]) -> None:
        self.weights, self.position = weights, 0

    def take(self, n: int) -> list[np.ndarray]:
        if self.position + n > len(self.weights):
            raise ValueError(f"ran out of weight tensors after {self.position}")
        self.position += n
        return [w for _, w in self.weights[self.position - n : self.position]]

    def last_name(self) -> str:
        return self.weights[self.position - 1][0]


def import_text_detector(model: TextUNet, onnx_path: str | Path) -> dict[str, int]:
    """Copy the detector's weights into `model` (in place); returns {"tensors": n, "parameters": n}.

    Raises WmError naming the first tensor that does not fit (a different detector file).
    """
    tensors = _Tensors(onnx_weights(onnx_path))
    try:
        assigned = _assign(model, tensors)
    except ValueError as exc:
        raise WmError(f"{onnx_path}: {exc}; not the PP-OCRv4 det model") from None
    left = len(tensors.weights) - tensors.position
    if left:
        raise WmError(f"{onnx_path}: {left} weight tensors left over; not the PP-OCRv4 det model")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in assigned.items():
            params[name].copy_(torch.from_numpy(np.array(value, dtype=np.float32)).reshape(params[name].shape))
    return {"tensors": len(tensors.weights), "parameters": len(assigned)}


def _assign(model: TextUNet, tensors: _Tensors) -> dict[str, np.ndarray]:
    """{parameter name: array} for every TextUNet detector parameter, BatchNorms folded (ValueError on a misfit)."""
    assigned: dict[str, np.ndarray] = {}
    stem_w, *stem_bn = tensors.take(5)
    assigned["backbone.stem.weight"], assigned["backbone.stem.bias"] = _fold_bn(stem_w, None, stem_bn, 0)
    for name, param in _param_order(model):
        (value,) = tensors.take(1)
        if value.size != param.numel() or (value.ndim > 1 and tuple(value.shape) != tuple(param.shape)):
            raise ValueError(f"tensor {tensors.last_name()} {tuple(value.shape)} does not fit {name} {tuple(param.shape)}")
        assigned[name] = value
    head_w, *head_bn = tensors.take(5)
    assigned["db.conv.weight"], assigned["db.conv.bias"] = _fold_bn(head_w, None, head_bn, 0)
    up1_w, up1_b, *up1_bn = tensors.take(6)
    assigned["db.up1.weight"], assigned["db.up1.bias"] = _fold_bn(up1_w, up1_b, up1_bn, 1)
    assigned["db.up2.weight"], assigned["db.up2.bias"] = tensors.take(2)
    return assigned


def check_against_onnx(model: TextUNet, onnx_path: str | Path, image: np.ndarray) -> float:
    """Largest |difference| between our DB text probability and ONNX Runtime's for one image.

    `image`: uint8 (H, W, 3) RGB with H and W multiples of 32.
    """
    import onnxruntime as ort  # deferred on purpose: only this check runs the original model

    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    ours = model.eval().text_probability(x)[0, 0].numpy()
    bgr = (image[..., ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: bgr.transpose(2, 0, 1)[None]})[0][0, 0]
    return float(np.abs(ours - theirs).max())
