"""Where the tile kernel's time goes, per layer: TSC cycles per output pixel in the expansion,
the tile products and the epilogue (docs/engine.md, Session 12).

    make cycles        # builds the diagnostic module (cmake -DXNORNET_CYCLES=ON), then runs this
    XNORNET_NATIVE_LIB=build/cycles/_engine....so .venv/bin/python benchmarks/cycles.py \
        [--batch 128] [--threads 1] [--runs 5] [--model-file F]

The counters live only in that build (`rdtsc` between `lfence`s around each part of every group
of pixel tiles; the default build has none) and print to stderr when the process exits, summed
over every run; layers of the same shape share a line. Needs a CPU with AMX (the counters are in
the tile kernel). A diagnostic, not a test.
"""
import argparse

import numpy as np

from xnornet.assets import shipped_model
from xnornet.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-file", default=None, help="a packed model (default: the shipped one)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    engine = Engine.load(args.model_file or shipped_model(), threads=args.threads)
    if not engine.isa.startswith("amx"):
        raise SystemExit(f"the counters are in the tile kernel; this CPU runs {engine.isa!r}")
    images = np.random.default_rng(0).integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    for _ in range(args.runs):
        engine.run(images)
    print(f"{args.runs} runs of {args.batch} images on {args.threads} thread(s), {engine.isa}; "
          "the counters follow (stderr, at exit)")


if __name__ == "__main__":
    main()
