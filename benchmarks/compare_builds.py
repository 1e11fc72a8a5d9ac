"""Two or more builds of the native module, per binary conv layer, in fresh processes, alternating.

    .venv/bin/python benchmarks/compare_builds.py [--rounds 3] [--repeats 9] [--batch 128]
        [--threads 1] [--model-file F] BUILD [BUILD ...]

A BUILD is a path to a compiled `_engine*.so` (or `installed`, the module in the package),
optionally followed by `,VAR=VALUE` pairs set in that process's environment (for diagnostic
switches). Two builds cannot share one process (same module name), so each measurement is a
fresh process loaded through $XNORNET_NATIVE_LIB: the median of --repeats whole-network runs
and the median per-op profile (`xnornet bench kernels` uses the same profile). Each round runs
every build once, the order rotating from round to round, because on this project's VM the
first process after a pause runs slower. Prints every round, then the median over rounds per
build. How docs/engine.md's build comparisons were taken. A benchmark, not a test.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(model_file, batch, threads, repeats):
    import numpy as np

    from xnornet import modelfile as mf
    from xnornet.bench import profiled_runs
    from xnornet.engine import Engine

    engine = Engine.load(model_file, threads=threads)
    x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    totals, per_op = profiled_runs(engine, x, repeats)
    shapes = mf.layer_shapes(mf.read_model(model_file))
    ops = {str(i): 1e3 * float(per_op[j]) for j, (i, op, _, _) in enumerate(shapes) if op.kind == mf.BCONV}
    print(json.dumps({"total": 1e3 * statistics.median(totals), "ops": ops}))


def parse_build(text):
    path, *pairs = text.split(",")
    env = dict(p.split("=", 1) for p in pairs)
    if path != "installed" and not os.path.isfile(path):
        raise SystemExit(f"no such build: {path}")
    return {"label": text, "path": path, "env": env}


def measure(build, args):
    env = dict(os.environ, **build["env"])
    env.pop("XNORNET_NATIVE_LIB", None)
    if build["path"] != "installed":
        env["XNORNET_NATIVE_LIB"] = os.path.abspath(build["path"])
    cmd = [sys.executable, __file__, "--child", "--model-file", args.model_file, "--batch",
           str(args.batch), "--threads", str(args.threads), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{build['label']} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(result):
    ops = " ".join(f"{k}:{v:.2f}" for k, v in result["ops"].items())
    return f"total {result['total']:.1f} ms | {ops}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("builds", nargs="*", help="PATH_TO_SO or 'installed', optionally ,VAR=VALUE,...")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=9, help="timed runs per process (median)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-file", default=None, help="packed model (default: the shipped one)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model_file is None:
        from xnornet.assets import shipped_model
        args.model_file = str(shipped_model())
    if args.child:
        return child(args.model_file, args.batch, args.threads, args.repeats)
    if len(args.builds) < 1:
        raise SystemExit("name at least one build (two to compare)")
    builds = [parse_build(b) for b in args.builds]
    results = {b["label"]: [] for b in builds}
    print(f"model {args.model_file}; batch {args.batch}, {args.threads} thread(s); ms, medians of "
          f"{args.repeats} runs per process; op: per-op profile (binary conv layers)")
    for r in range(args.rounds):
        k = r % len(builds)
        for b in builds[k:] + builds[:k]:  # rotate the order: the first slot runs slow here
            res = measure(b, args)
            results[b["label"]].append(res)
            print(f"round {r + 1} {b['label']}: {fmt(res)}", flush=True)
    print(f"median over {args.rounds} round(s):")
    for label, rs in results.items():
        ops = {k: statistics.median(r["ops"][k] for r in rs) for k in rs[0]["ops"]}
        print(f"  {label}: {fmt({'total': statistics.median(r['total'] for r in rs), 'ops': ops})}")


if __name__ == "__main__":
    main()
