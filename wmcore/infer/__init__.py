"""Batched inference: robust image loading, tiling, adaptive batches, torch/ONNX backends, `wm predict`."""
