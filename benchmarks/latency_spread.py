"""Batch-1 latency spread of the native engine per thread count: median and 90th percentile.

    .venv/bin/python benchmarks/latency_spread.py [--threads 1,2] [--runs 300] [--model-file F]

Run it on an idle machine and beside a busy one (e.g. a training run), and under OpenMP settings
such as OMP_WAIT_POLICY=passive or GOMP_SPINCOUNT=N (read once, when the OpenMP runtime loads):
docs/benchmarks.md records what it showed. A benchmark, not a test.
"""
import argparse
import os
import time

import numpy as np

from xnornet.assets import shipped_model
from xnornet.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--runs", type=int, default=300, help="timed runs per thread count (default 300)")
    ap.add_argument("--model-file", default=None, help="packed model (default: the shipped one)")
    a = ap.parse_args()
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    policy = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    for threads in (int(t) for t in a.threads.split(",")):
        engine = Engine.load(a.model_file or shipped_model(), threads=threads)
        for _ in range(20):  # warm-up: buffers, caches
            engine.run(image)
        ms = []
        for _ in range(a.runs):
            t = time.perf_counter()
            engine.run(image)
            ms.append(1e3 * (time.perf_counter() - t))
        print(f"threads {threads} {policy or '(OpenMP defaults)'}: batch-1 latency median "
              f"{np.median(ms):.3f} ms, 90th percentile {np.percentile(ms, 90):.3f} ms, "
              f"max {max(ms):.2f} ms")


if __name__ == "__main__":
    main()
