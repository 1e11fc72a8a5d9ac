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


def straight_through(x: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """binarize(x) in the forward pass, the gradient of ``surrogate`` (a function of x) backward.

    ``s - s.detach()`` is exactly 0 for finite s, so the forward value is exactly +-1, and autograd
    sees only the surrogate. Written with plain tensor ops rather than a custom autograd.Function:
    torch.compile on CUDA (torch 2.11, inductor) dropped the gradient through such a Function,
    which left every layer below the first binary one untrained (tests/test_cuda.py).
    """
    return binarize(x) + (surrogate - surrogate.detach())


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x); gradient 1 where |x| <= 1, else 0 (the gradient of clamp(x, -1, 1))."""
    return straight_through(x, x.clamp(-1.0, 1.0))


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x); gradient 2 - 2|x| where |x| <= 1, else 0: Bi-Real's ApproxSign, the derivative of
    the piecewise polynomial 2c - c|c| with c = clamp(x, -1, 1)."""
    c = x.clamp(-1.0, 1.0)
    return straight_through(x, 2.0 * c - c * c.abs())


class Quantizer(nn.Module):
    """Base class: ``precision`` is the number of bits a quantized value needs."""

    precision = 1
    name = "quantizer"

    def extra_repr(self) -> str:
        return f"precision={self.precision}"


class SteSign(Quantizer):
    name = "ste_sign"

    def forward(self, x):
        return ste_sign(x)


class ApproxSign(Quantizer):
    name = "approx_sign"

    def forward(self, x):
        return approx_sign(x)


QUANTIZERS = {cls.name: cls for cls in (SteSign, ApproxSign)}


def get_quantizer(spec: str | Quantizer | None) -> Quantizer | None:
    """Return a quantizer module for a name, an instance, or None (full precision)."""
    if spec is None or isinstance(spec, Quantizer):
        return spec
    try:
        return QUANTIZERS[spec]()
    except KeyError:
        raise ValueError(f"unknown quantizer {spec!r}; choose one of {sorted(QUANTIZERS)}") from None
