"""CUDA training matches CPU training: one step's loss and gradients, eager and compiled, fp32 and
bf16 autocast. Skipped where no GPU is present (CI); run on a lent GPU machine.

Binarization amplifies tiny numeric differences (a value near 0 may take the other sign), so
gradients are compared by cosine similarity per parameter, not element by element.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from xnornet.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def one_step(kind, device, amp, compiled, x, y):
    torch.manual_seed(0)
    model = build_model(kind, widths=(64, 128, 256), depths=(1, 1, 1))
    model = model.to(device, memory_format=torch.channels_last).train()
    net = torch.compile(model) if compiled else model
    ctx = torch.autocast(device, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        logits = net(x.to(device))
    loss = F.cross_entropy(logits.float(), y.to(device))
    loss.backward()
    return loss.item(), {n: p.grad.detach().float().cpu() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["bireal", "xnor", "fp32"])
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_cuda_step_matches_cpu(kind, amp, compiled):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    ref_loss, ref = one_step(kind, "cpu", False, False, x, y)
    loss, got = one_step(kind, "cuda", amp, compiled, x, y)
    # Parameters whose gradient is ~0 in theory (alpha and biases right before a BN, which cancels
    # them) carry only rounding noise: skip them.
    big = max(r.norm().item() for r in ref.values())
    worst = []
    for name, r in ref.items():
        if r.norm().item() < 1e-2 * big:
            continue
        cos = F.cosine_similarity(r.flatten(), got[name].flatten(), dim=0).item()
        worst.append((cos, name, r.norm().item(), got[name].norm().item()))
    worst.sort()
    report = "\n".join(f"{n}: cos {c:.4f} |ref| {a:.3g} |cuda| {b:.3g}" for c, n, a, b in worst[:6])
    print(f"{kind} amp={amp} compiled={compiled}: loss cpu {ref_loss:.4f} cuda {loss:.4f}\n{report}")
    assert abs(loss - ref_loss) < 0.05 * abs(ref_loss), report
    assert worst[0][0] > (0.5 if amp else 0.9), report
