"""Training throughput of each model with and without bfloat16 autocast and torch.compile.

    .venv/bin/python benchmarks/train_speed.py [--models fp32,bireal] [--batch 256] [--steps 6]

Random data, SGD steps; prints the median images/s over the timed steps (the first step, which
includes compilation, is not timed). A benchmark, not a test: numbers depend on the machine and
its load, so compare rows of one run only.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from xnornet.models import build_model


def images_per_s(kind, batch, steps, amp, compile_):
    torch.manual_seed(0)
    model = build_model(kind).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    net = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="fp32,xnor,bireal")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    a = p.parse_args()
    print(f"| model | eager fp32 | eager bf16 | bf16 + compile |  (img/s, batch {a.batch}, "
          f"{torch.get_num_threads()} threads)")
    print("|---|---|---|---|")
    for kind in a.models.split(","):
        cells = [images_per_s(kind, a.batch, a.steps, amp, comp)
                 for amp, comp in ((False, False), (True, False), (True, True))]
        print(f"| {kind} | " + " | ".join(f"{c:.0f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
