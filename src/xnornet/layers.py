"""Binary layers built from ordinary ones: binarization is an argument, not a subclass per variant.

``QuantConv2d`` is a ``nn.Conv2d`` that quantizes its input and its latent float kernel when it runs.
Weight scaling (one alpha per output channel) is one of:

- ``"none"``:      y = conv(q(x), sign(W))
- ``"mean_abs"``:  XNOR-Net's fixed alpha = mean|W| over (C_in, kh, kw), recomputed from W each call
- ``"learnable"``: a trained per-channel alpha, initialised to mean|W|

Padding is zero padding of the *binarized* input, so a padded tap contributes 0 to the dot product
(not +1 or -1). The native engine reproduces this by counting only valid taps; see docs/engine.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import get_quantizer

SCALE_MODES = ("none", "mean_abs", "learnable")


class QuantConv2d(nn.Conv2d):
    """Conv2d with optional input/kernel quantizers and per-output-channel weight scaling."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                 input_quantizer=None, kernel_quantizer=None, scale="none", bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        if scale not in SCALE_MODES:
            raise ValueError(f"scale must be one of {SCALE_MODES}, got {scale!r}")
        self.input_quantizer = get_quantizer(input_quantizer)
        self.kernel_quantizer = get_quantizer(kernel_quantizer)
        self.scale = scale
        if scale == "learnable":
            self.alpha = nn.Parameter(self.weight.detach().abs().mean(dim=(1, 2, 3)))
        else:
            self.register_parameter("alpha", None)

    @property
    def is_binary(self) -> bool:
        return self.kernel_quantizer is not None

    def scaled_kernel(self) -> torch.Tensor:
        """The kernel the convolution uses: quantized, times alpha. Shape (C_out, C_in, kh, kw)."""
        w = self.weight
        if self.kernel_quantizer is None:
            return w
        q = self.kernel_quantizer(w)
        if self.scale == "mean_abs":
            q = q * w.abs().mean(dim=(1, 2, 3), keepdim=True)
        elif self.scale == "learnable":
            q = q * self.alpha.view(-1, 1, 1, 1)
        return q

    def forward(self, x):
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.conv2d(x, self.scaled_kernel(), self.bias, self.stride, self.padding)

    def extra_repr(self):
        return super().extra_repr() + f", scale={self.scale}"


@torch.no_grad()
def clip_latent_weights(model: nn.Module, bound: float = 1.0) -> None:
    """Clip the latent float weights of every binary conv to [-bound, bound].

    Called after each optimizer step: outside the clip range the STE gradient is 0, so a weight that
    drifts there would be frozen for good.
    """
    for m in model.modules():
        if isinstance(m, QuantConv2d) and m.is_binary:
            m.weight.clamp_(-bound, bound)
