"""UNet for per-pixel watermark segmentation: image in, one channel of logits out.

Any input height/width is accepted: the input is padded (reflect) to a multiple
of 2**depth and the logits are cropped back, so output size == input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wmcore.model.segmenter import Segmenter


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(Segmenter):
    """Classic UNet (max-pool down, transposed-conv up, skip concatenation).

    Args:
        in_channels: input channels (3 for RGB).
        base_width: channels of the first stage; stage i has base_width * 2**i.
        depth: number of down-sampling stages.

    forward(x): x float (N, C, H, W) in [0, 1] -> logits (N, 1, H, W).
    """

    def __init__(self, in_channels: int = 3, base_width: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.in_channels, self.base_width, self.depth = in_channels, base_width, depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.stem = ConvBlock(in_channels, widths[0])
        self.down = nn.ModuleList(ConvBlock(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.dec = nn.ModuleList(ConvBlock(widths[i] * 2, widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, 1)
        # Inputs are in [0, 1]; centring them keeps the first BatchNorm statistics tame.
        self.register_buffer("mean", torch.tensor([0.5] * in_channels).view(1, -1, 1, 1), persistent=False)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def model_args(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "base_width": self.base_width, "depth": self.depth}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects (N, {self.in_channels}, H, W) float input, got shape {tuple(x.shape)}; "
                "convert images to RGB and add a batch dimension"
            )
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        x = x - self.mean
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            y = dec(torch.cat([up(y), skips.pop()], dim=1))
        return self.head(y)[..., :h, :w]

    @property
    def activation_channels(self) -> int:
        """Float channels per input pixel the forward pass holds at its peak, roughly (for batch memory estimates)."""
        return 3 + 6 * self.base_width
