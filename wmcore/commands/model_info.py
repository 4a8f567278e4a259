"""`wm model-info`: parameter count and FLOPs per image of params.model."""

from __future__ import annotations

import argparse

from wmcore.commands.common import load
from wmcore.model import build_model, count_flops, count_parameters


def run(args: argparse.Namespace) -> int:
    p = load(args)
    model = build_model(**p.model.model_dump())
    size = args.size
    flops = count_flops(model, size, size, p.model.in_channels)
    args_ = model.model_args()
    print(f"{args_.pop('arch', 'unet')}: " + " ".join(f"{k}={v}" for k, v in args_.items() if k != "in_channels"))
    print(f"parameters: {count_parameters(model):,}")
    print(f"GFLOPs per {size}x{size} image: {flops / 1e9:.2f}")
    return 0
