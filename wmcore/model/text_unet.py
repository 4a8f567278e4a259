"""TextUNet: a UNet-style watermark segmenter whose encoder was trained on real text.

The encoder and feature pyramid are PP-OCRv4's mobile text detector (PPLCNetV3 backbone at
scale 0.75 + RSE-FPN neck + DB head, Apache-2.0, shipped in the `rapidocr-onnxruntime` wheel),
rebuilt here in PyTorch in its re-parameterised inference form so its weights load 1:1
(`wmcore/model/ocr_import.py`). Every BatchNorm of the original is folded into its conv, so the
encoder has no batch statistics at all; the decoder uses GroupNorm. The result is independent of
the micro-batch: gradient accumulation is exact, and one image predicts the same alone or in a batch.

Shapes: forward(x) with x float (N, 3, H, W) RGB in [0, 1] -> watermark logits (N, 1, H, W).
The input is padded (reflect) to a multiple of 32 and the logits cropped back.

Decoder (ours, trained from scratch): at 1/4 resolution it fuses the FPN output (96 ch), the DB
head's hidden text features (24 ch) and the backbone's 1/4 features (48 ch); at 1/2 it adds the
backbone's first stage (32 ch); the full-resolution step sees the RGB pixels and the DB head's
own text probability, so stroke edges come from the image while the 1/4 map says "watermark".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wmcore.model.segmenter import Segmenter

# PPLCNetV3 (det, scale 0.75): (kernel, in, out, stride, squeeze-excite) per block, by stage.
BACKBONE_STAGES: tuple[tuple[tuple[int, int, int, int, bool], ...], ...] = (
    ((3, 16, 32, 1, False),),
    ((3, 32, 48, 2, False), (3, 48, 48, 1, False)),
    ((3, 48, 96, 2, False), (3, 96, 96, 1, False)),
    ((3, 96, 192, 2, False), (5, 192, 192, 1, False), (5, 192, 192, 1, False), (5, 192, 192, 1, False),
     (5, 192, 192, 1, False)),
    ((5, 192, 384, 2, True), (5, 384, 384, 1, True), (5, 384, 384, 1, False), (5, 384, 384, 1, False)),
)
STEM_WIDTH = 16
# Channels of the backbone's det outputs (1x1 convs after stages 2..5) and of the FPN.
DET_OUT = (12, 18, 42, 360)
FPN_WIDTH = 96
HEAD_WIDTH = 24


def paddle_hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """Paddle's hardsigmoid (slope 0.2, offset 0.5), which the FPN's squeeze-excite layers were trained with."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


class Affine(nn.Module):
    """A learnable scalar scale and bias (PPLCNetV3's LearnableAffineBlock)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.bias


class RepConv(nn.Module):
    """Conv (BN folded) -> affine -> [hardswish -> affine]: one re-parameterised PPLCNetV3 layer."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, act: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups)
        self.affine: Affine | None = Affine()
        self.act_affine = Affine() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x) if self.affine is None else self.affine(self.conv(x))
        return x if self.act_affine is None else self.act_affine(F.hardswish(x))

    @torch.no_grad()
    def fold_affine(self) -> None:
        """Fold the conv's affine into its weights (inference only: the layer computes the same function
        with two element-wise passes less; the learnable scale and bias are gone)."""
        if self.affine is None:
            return
        scale, bias = self.affine.scale, self.affine.bias
        self.conv.weight.mul_(scale.view(-1, 1, 1, 1))
        self.conv.bias.mul_(scale).add_(bias)
        self.affine = None


class SqueezeExcite(nn.Module):
    """Channel gate: x * hardsigmoid(fc(relu(fc(mean(x))))), the backbone's SE (torch's hardsigmoid)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(gate)


class LCNetBlock(nn.Module):
    """Depthwise RepConv (no activation when it strides) [-> SE] -> pointwise RepConv."""

    def __init__(self, kernel: int, cin: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        self.dw = RepConv(cin, cin, kernel, stride, cin, act=stride == 1)
        self.se = SqueezeExcite(cin) if se else None
        self.pw = RepConv(cin, cout, 1, 1, 1, act=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(x)
        if self.se is not None:
            x = self.se(x)
        return self.pw(x)


class TextBackbone(nn.Module):
    """PPLCNetV3 (det): features at 1/2 (32 ch, for our decoder), 1/4, 1/8, 1/16, 1/32 (det widths)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, STEM_WIDTH, 3, 2, 1)
        self.stages = nn.ModuleList(nn.Sequential(*(LCNetBlock(*b) for b in stage)) for stage in BACKBONE_STAGES)
        self.det_out = nn.ModuleList(
            nn.Conv2d(stage[-1][2], width, 1) for stage, width in zip(BACKBONE_STAGES[1:], DET_OUT, strict=True)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """x: BGR normalised to [-1, 1] -> (1/2 features, [1/4..1/32 stage outputs], [1/4..1/32 det outputs])."""
        half = self.stages[0](self.stem(x))
        feats, y = [], half
        for stage in self.stages[1:]:
            y = stage(y)
            feats.append(y)
        return half, feats, [conv(f) for conv, f in zip(self.det_out, feats, strict=True)]


class ResidualSE(nn.Module):
    """RSELayer: conv (no bias) then x + x * gate(x), the FPN's residual squeeze-excite."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False)
        self.reduce = nn.Conv2d(cout, cout // 4, 1)
        self.expand = nn.Conv2d(cout // 4, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        gate = paddle_hardsigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x + x * gate


class RSEFPN(nn.Module):
    """Top-down feature pyramid; returns the four levels upsampled to 1/4 and concatenated (96 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ResidualSE(c, FPN_WIDTH, 1) for c in DET_OUT)
        self.smooth = nn.ModuleList(ResidualSE(FPN_WIDTH, FPN_WIDTH // 4, 3) for _ in DET_OUT)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 2, -1, -1):  # 1/16 += up(1/32), 1/8 += up(1/16), 1/4 += up(1/8)
            lat[i] = lat[i] + F.interpolate(lat[i + 1], scale_factor=2.0, mode="nearest")
        outs = [conv(f) for conv, f in zip(self.smooth, lat, strict=True)]
        ups = [F.interpolate(o, scale_factor=float(2**i), mode="nearest") if i else o for i, o in enumerate(outs)]
        return torch.cat(ups[::-1], dim=1)


class DBHead(nn.Module):
    """DB probability head (BNs folded): 1/4 features -> hidden (24 ch) and text logits at full size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(FPN_WIDTH, HEAD_WIDTH, 3, 1, 1)
        self.up1 = nn.ConvTranspose2d(HEAD_WIDTH, HEAD_WIDTH, 2, 2)
        self.up2 = nn.ConvTranspose2d(HEAD_WIDTH, 1, 2, 2)

    def forward(self, fpn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.conv(fpn))
        return hidden, self.up2(F.relu(self.up1(hidden)))


def _chain(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """x through `layers` in order (a Sequential's tail without building a new Sequential)."""
    for layer in layers:
        x = layer(x)
    return x


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class SeparableBlock(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, each GroupNorm + ReLU: a cheap 3x3 context step."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False), _norm(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False), _norm(channels), nn.ReLU(inplace=True),
        )


class Fuse(nn.Sequential):
    """1x1 projection of concatenated features (GroupNorm + ReLU), then `blocks` separable steps."""

    def __init__(self, cin: int, cout: int, blocks: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 1, bias=False), _norm(cout), nn.ReLU(inplace=True),
            *(SeparableBlock(cout) for _ in range(blocks)),
        )


class EdgeHead(nn.Module):
    """A full-resolution residual on the logits: where exactly a stroke's edge runs.

    Sees the RGB pixels, the base watermark probability and the DB text probability through two
    3x3 convs (a 5 x 5 window; ~50 multiply-adds per pixel and channel). Its last conv starts at
    zero, so a model given a head starts as exactly the model without one: a trained checkpoint
    warm-starts and the head alone can be trained (`train.train_only: [edge]`).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(5, channels, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, 1, 3, 1, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor, logits: torch.Tensor, text_logit: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x * 2.0 - 1.0, torch.sigmoid(logits) * 2.0 - 1.0, torch.sigmoid(text_logit) * 2.0 - 1.0], 1)
        return logits + self.body(z)


class TextUNet(Segmenter):
    """PP-OCRv4 det encoder + FPN + DB head, with a watermark decoder (see the module docstring).

    Args:
        width: channels of the decoder at 1/4 resolution (1/2 gets width // 2).
        in_channels: must be 3 (RGB); kept so checkpoints describe their input like the UNet's.
        edge: channels of the full-resolution edge head (`EdgeHead`); 0 = none (the shipped model).

    forward(x): x float (N, 3, H, W) RGB in [0, 1] -> logits (N, 1, H, W).
    """

    multiple = 32

    def __init__(self, width: int = 64, in_channels: int = 3, edge: int = 0) -> None:
        super().__init__()
        if in_channels != 3:
            raise ValueError(f"TextUNet takes RGB input (in_channels 3), got in_channels={in_channels}")
        self.width, self.in_channels, self.edge_channels = width, in_channels, edge
        self.backbone = TextBackbone()
        self.fpn = RSEFPN()
        self.db = DBHead()
        half = max(8, width // 2)
        self.dec_quarter = Fuse(FPN_WIDTH + HEAD_WIDTH + BACKBONE_STAGES[1][-1][2], width, 2)
        self.dec_half = Fuse(width + BACKBONE_STAGES[0][-1][2], half, 1)
        self.to_full = nn.Conv2d(half, 8, 1)
        # Full resolution: 8 upsampled decoder channels + RGB + the DB text logit, 1x1 and depthwise only.
        self.full = nn.Sequential(
            nn.Conv2d(8 + 3 + 1, 8, 1), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 1, 1),
        )
        nn.init.constant_(self.full[-1].bias, -4.0)  # start near "no watermark": p ~ 0.02
        self.edge = EdgeHead(edge) if edge else None

    @property
    def activation_channels(self) -> int:
        """Float values per input pixel alive at the peak, roughly: the full-resolution step's ~12 channels
        in and 8 out, the upsampled maps and the 1/2-resolution features, and the edge head's 5 inputs and its
        hidden channels when it has one (for batch memory estimates)."""
        return 48 + (5 + self.edge_channels if self.edge_channels else 0)

    def model_args(self) -> dict[str, int | str]:
        args: dict[str, int | str] = {"arch": "text_unet", "in_channels": self.in_channels, "width": self.width}
        if self.edge_channels:  # absent when 0, so checkpoints from before the head still describe themselves
            args["edge"] = self.edge_channels
        return args

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters that came from the text detector (for a smaller learning rate)."""
        return [*self.backbone.parameters(), *self.fpn.parameters(), *self.db.parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"TextUNet expects (N, 3, H, W) float RGB input, got shape {tuple(x.shape)}; "
                "convert images to RGB and add a batch dimension"
            )
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if h > ph and w > pw else "replicate")
        bgr = x.flip(1) * 2.0 - 1.0  # the detector was trained on BGR scaled to [-1, 1]
        half, feats, det = self.backbone(bgr)
        fpn = self.fpn(det)
        hidden, text_logit = self.db(fpn)
        q = self.dec_quarter(torch.cat([fpn, hidden, feats[0]], dim=1))
        # Both concatenations below are computed as sums of 1x1 convs over their parts, and a 1x1 conv
        # commutes with bilinear upsampling (both linear, the interpolation weights sum to 1): each
        # part is projected where it is smallest. The same function as conv(cat(up(a), b)), no
        # concatenated map at 1/2 or full resolution (measured ~1.07x per pass on the 2-core CPU).
        proj = self.dec_half[0].weight  # (half, width + 32, 1, 1): [q | half]
        split = q.shape[1]
        mixed = F.interpolate(F.conv2d(q, proj[:, :split]), size=half.shape[-2:], mode="bilinear", align_corners=False)
        t = self.to_full(_chain(list(self.dec_half)[1:], mixed + F.conv2d(half, proj[:, split:])))
        entry = self.full[0]  # 1x1 over [8 upsampled decoder channels | RGB | DB text logit]
        e_dec, e_rgb, e_text = entry.weight[:, :8], entry.weight[:, 8:11], entry.weight[:, 11:]
        dec = F.interpolate(F.conv2d(F.relu(t), e_dec), size=x.shape[-2:], mode="bilinear", align_corners=False)
        y = dec + F.conv2d(x, e_rgb, entry.bias) + text_logit * e_text.reshape(1, -1, 1, 1)
        logits = _chain(list(self.full)[1:], y)
        if self.edge is not None:
            logits = self.edge(x, logits, text_logit)
        return logits[..., :h, :w]

    def fold_for_inference(self) -> TextUNet:
        """This model with every backbone affine folded into its conv (same outputs, fewer passes);
        for inference only: the folded model's state dict no longer matches a checkpoint."""
        for module in self.modules():
            if isinstance(module, RepConv):
                module.fold_affine()
        return self

    @torch.inference_mode()
    def text_probability(self, x: torch.Tensor) -> torch.Tensor:
        """The DB head's own text probability (N, 1, H, W) for RGB x in [0, 1] (a multiple of 32 in size)."""
        _, _, det = self.backbone(x.flip(1) * 2.0 - 1.0)
        return torch.sigmoid(self.db(self.fpn(det))[1])
