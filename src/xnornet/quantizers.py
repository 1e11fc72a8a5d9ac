"""Binarization quantizers: sign in the forward pass, a straight-through estimator backward.

Every quantizer maps a real tensor to {-1, +1} with sign(0) = +1 (torch.sign returns 0 there,
which is not a binary value, so it is never used here). They differ only in the gradient:

- ``ste_sign``: clipped identity, d/dx = 1 where |x| <= 1, else 0 (Hubara et al.; larq's ste_sign).
- ``approx_sign``: Bi-Real Net's piecewise-polynomial ApproxSign, d/dx = 2 - 2|x| where |x| <= 1.

Layers take a quantizer as an argument (larq-style), by name or instance; see ``get_quantizer``.
"""
from __future__ import annotations

import torch
from torch import nn


def binarize(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1, in x's dtype."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _SteSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return binarize(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return binarize(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (2.0 - 2.0 * x.abs()).clamp_(min=0.0).to(grad.dtype)


class Quantizer(nn.Module):
    """Base class: ``precision`` is the number of bits a quantized value needs."""

    precision = 1
    name = "quantizer"

    def extra_repr(self) -> str:
        return f"precision={self.precision}"


class SteSign(Quantizer):
    name = "ste_sign"

    def forward(self, x):
        return _SteSign.apply(x)


class ApproxSign(Quantizer):
    name = "approx_sign"

    def forward(self, x):
        return _ApproxSign.apply(x)


QUANTIZERS = {cls.name: cls for cls in (SteSign, ApproxSign)}


def get_quantizer(spec: str | Quantizer | None) -> Quantizer | None:
    """Return a quantizer module for a name, an instance, or None (full precision)."""
    if spec is None or isinstance(spec, Quantizer):
        return spec
    try:
        return QUANTIZERS[spec]()
    except KeyError:
        raise ValueError(f"unknown quantizer {spec!r}; choose one of {sorted(QUANTIZERS)}") from None
