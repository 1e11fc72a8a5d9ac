"""The three networks, all on one trunk so that benchmarks compare like with like.

Trunk (shapes per image, N = batch):
    stem      conv3x3 3->W0, BN                         full precision in every model
    stage s   depths[s] blocks of width widths[s]; the first block of stages 1.. has stride 2
    head      BN, ReLU, global average pool, Linear(W_last -> classes)   full precision

The block is what differs:
    fp32    y = ReLU(BN(conv(x)) + shortcut(x))                       (the teacher)
    xnor    y = BinConv_meanabs(sign(BN(x)))                           classic XNOR-Net, no shortcut
    bireal  y = BN(BinConv_alpha(sign(x + t))) + shortcut(x)           Bi-Real: real-valued shortcut
            around every binary conv, learnable alpha and threshold t, BN after the conv, no ReLU
shortcut(x) is x, or where the shape changes AvgPool2d(2) and the channels repeated (C -> 2C): no
parameters, so the shortcut costs nothing in the model file (Bi-Real used a float 1x1 conv here,
which would be a third of our file).
Binary convs have input channels that are multiples of 64 with the default widths, so one packed
pixel is a whole number of 64-bit words in the engine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ALIASES, MODEL_KINDS, TrunkConfig  # noqa: F401 (re-exported)
from .layers import QuantConv2d

class Downsample(nn.Module):
    """AvgPool2d(stride), then the channels repeated cout/cin times: (N,C,H,W) -> (N,kC,H/s,W/s)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cout % cin:
            raise ValueError(f"a shortcut needs out channels ({cout}) to be a multiple of in ({cin})")
        self.repeat, self.stride = cout // cin, stride

    def forward(self, x):
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        return x.repeat(1, self.repeat, 1, 1) if self.repeat > 1 else x


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Identity() if cin == cout and stride == 1 else Downsample(cin, cout, stride)


class FPBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + self.shortcut(x))


class XnorBlock(nn.Module):
    def __init__(self, cin, cout, stride, binary_weights=True):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = QuantConv2d(cin, cout, 3, stride, 1, input_quantizer="ste_sign",
                                kernel_quantizer="ste_sign" if binary_weights else None,
                                scale="mean_abs")

    def forward(self, x):
        return self.conv(self.bn(x))


class BiRealBlock(nn.Module):
    def __init__(self, cin, cout, stride, binary_weights=True):
        super().__init__()
        # Learnable per-channel threshold: sign(x + t). Folded into the previous epilogue at export.
        self.threshold = nn.Parameter(torch.zeros(1, cin, 1, 1))
        self.conv = QuantConv2d(cin, cout, 3, stride, 1, input_quantizer="approx_sign",
                                kernel_quantizer="ste_sign" if binary_weights else None,
                                scale="learnable")
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x):
        return self.bn(self.conv(x + self.threshold)) + self.shortcut(x)


BLOCKS = {"fp32": FPBlock, "xnor": XnorBlock, "bireal": BiRealBlock}


class Trunk(nn.Module):
    def __init__(self, config: TrunkConfig):
        super().__init__()
        self.config = config
        w0 = config.widths[0]
        stem = [nn.Conv2d(3, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0)]
        if config.kind == "fp32":
            stem.append(nn.ReLU(inplace=True))
        self.stem = nn.Sequential(*stem)
        block, blocks, cin = BLOCKS[config.kind], [], w0
        extra = {} if config.kind == "fp32" else {"binary_weights": config.binary_weights}
        for s, (width, depth) in enumerate(zip(config.widths, config.depths)):
            for d in range(depth):
                blocks.append(block(cin, width, 2 if (s > 0 and d == 0) else 1, **extra))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, config.num_classes))

    def forward(self, x):  # x: (N, 3, H, W) normalized float
        return self.head(self.blocks(self.stem(x)))


def build_model(kind: str = "bireal", **overrides) -> Trunk:
    """Build a model by name ('fp32'/'baseline', 'xnor', 'bireal'); overrides go to TrunkConfig."""
    return Trunk(TrunkConfig(kind=kind, **overrides))
