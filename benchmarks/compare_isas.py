"""Native engine speed per kernel implementation, in one process, runs alternating.

    .venv/bin/python benchmarks/compare_isas.py [--isas amx+avx512,avx512] [--model-file F]
        [--cases 1x128,2x128,1x1,2x1,2x16] [--repeats 9]

A case is THREADSxBATCH. Each case loads one engine per implementation and times engine.run on
the same random uint8 images, alternating between implementations so that both see the same
machine load; prints the median ms of each and the ratio to the first implementation. Checks that
all implementations give the same logits (to 1e-4). Unsupported implementations are skipped with a note.
A benchmark, not a test: compare rows of one run only.
"""
import argparse
import statistics
import time

import numpy as np

from xnornet.engine import Engine, implementations
from xnornet.assets import shipped_model


def parse_case(text):
    threads, batch = (int(v) for v in text.lower().split("x"))
    return threads, batch


def run_case(path, isas, threads, batch, repeats):
    x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    engines = {isa: Engine.load(path, threads=threads, isa=isa) for isa in isas}
    outputs = {isa: e.run(x) for isa, e in engines.items()}  # also the warm-up run
    first = outputs[isas[0]]
    for isa, y in outputs.items():  # the float stem's sum order differs per ISA: ~1e-6
        if not np.allclose(y, first, rtol=1e-4, atol=1e-4):
            raise SystemExit(f"{isa} and {isas[0]} disagree (max |diff| {np.abs(y - first).max():.3g})")
    times = {isa: [] for isa in isas}
    for _ in range(repeats):
        for isa, e in engines.items():
            t = time.perf_counter()
            e.run(x)
            times[isa].append(time.perf_counter() - t)
    return {isa: 1e3 * statistics.median(v) for isa, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--isas", default="amx+avx512,avx512")
    p.add_argument("--model-file", default=None, help="packed model (default: the shipped one)")
    p.add_argument("--cases", default="1x128,2x128,1x1,2x1,2x16", help="THREADSxBATCH, comma-separated")
    p.add_argument("--repeats", type=int, default=9, help="timed runs per implementation and case "
                   "(batch 1 and 16 cases take 20x and 5x as many)")
    args = p.parse_args()
    supported = {i["name"] for i in implementations() if i["supported"]}
    isas = [i for i in args.isas.split(",") if i in supported]
    for i in args.isas.split(","):
        if i not in supported:
            print(f"skipping {i}: not supported on this CPU (or not in this build)")
    if not isas:
        raise SystemExit("no implementation to compare")
    path = args.model_file or str(shipped_model())
    print(f"model {path}; median ms per engine.run, ratio to {isas[0]}")
    for case in args.cases.split(","):
        threads, batch = parse_case(case)
        repeats = args.repeats * (20 if batch == 1 else 5 if batch <= 16 else 1)
        ms = run_case(path, isas, threads, batch, repeats)
        print(f"{threads} thread(s), batch {batch:4d}: " + ", ".join(
            f"{isa} {v:8.3f} ms ({v / ms[isas[0]]:.3f})" for isa, v in ms.items()))


if __name__ == "__main__":
    main()
