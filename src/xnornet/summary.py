"""Per-layer model summary in the spirit of larq's: precision, parameters, memory and MACs.

MACs are per image, counted from the output shapes of one forward pass on a 32x32 image. A MAC is
binary when both the input and the kernel of the conv are quantized to 1 bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import QuantConv2d


@dataclass
class LayerRow:
    name: str
    kind: str
    params: int
    weight_bits: int                 # of the kernel: 1 for a binary conv's, else 32
    memory_bytes: float
    binary_macs: int
    fp_macs: int
    binary_params: int = 0           # the 1-bit kernel weights; the rest (alphas, ...) are 32-bit


def summarize(model: nn.Module, image_size: int = 32) -> list[LayerRow]:
    rows: list[LayerRow] = []
    hooks = []

    def hook(name):
        def fn(mod, inp, out):
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            binary_kernel = isinstance(mod, QuantConv2d) and mod.is_binary
            weight_bits, mem, macs, binary_params = 32, 4.0 * params, 0, 0
            if isinstance(mod, nn.Conv2d):
                k = mod.weight[0].numel()  # C_in/groups * kh * kw
                macs = out.numel() // out.shape[0] * k
                if binary_kernel:  # the kernel is 1 bit a weight; its scales (alpha) are floats
                    weight_bits, binary_params = 1, mod.weight.numel()
                    mem = binary_params / 8 + 4.0 * (params - binary_params)
            elif isinstance(mod, nn.Linear):
                macs = mod.in_features * mod.out_features
            binary_macs = macs if binary_kernel and mod.input_quantizer is not None else 0
            rows.append(LayerRow(name, type(mod).__name__, params, weight_bits, mem,
                                 binary_macs, macs - binary_macs, binary_params))
        return fn

    for name, mod in model.named_modules():
        if list(mod.parameters(recurse=False)) or isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(hook(name or type(mod).__name__)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def format_summary(model: nn.Module, title: str = "") -> str:
    rows = summarize(model)
    header = f"{'layer':<28} {'kind':<12} {'params':>9} {'bits':>4} {'memory':>10} " \
             f"{'binary MACs':>12} {'FP MACs':>11}"
    lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.name:<28} {r.kind:<12} {r.params:>9,} {r.weight_bits:>4} "
                     f"{_kib(r.memory_bytes):>10} {r.binary_macs:>12,} {r.fp_macs:>11,}")
    params = sum(r.params for r in rows)
    mem = sum(r.memory_bytes for r in rows)
    bmacs = sum(r.binary_macs for r in rows)
    fmacs = sum(r.fp_macs for r in rows)
    binary_params = sum(r.binary_params for r in rows)
    lines += ["-" * len(header),
              f"{'total':<28} {'':<12} {params:>9,} {'':>4} {_kib(mem):>10} {bmacs:>12,} {fmacs:>11,}",
              f"parameters: {binary_params:,} binary (1 bit), {params - binary_params:,} float (32 bit)",
              f"memory: {_kib(mem)} vs {_kib(4.0 * params)} in FP32 -> {4.0 * params / mem:.1f}x smaller",
              f"MACs per image: {bmacs + fmacs:,}, of which {100 * bmacs / max(1, bmacs + fmacs):.1f}% binary"]
    return "\n".join(lines)


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"
