"""Benchmarks: `kernels` (each binary conv layer, engine vs PyTorch FP32 conv of the same shape,
against the measured XOR-popcount peak). Timings are medians over repeats, in one run, one
process; the comparison is the ratio, since absolute times on a shared machine drift."""
from __future__ import annotations

import platform
from pathlib import Path
import statistics
import time

import numpy as np

from . import modelfile as mf


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocation, first-touch, lazy init
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def random_model_file(path, kind: str = "bireal") -> str:
    """Export the default trunk of `kind` with random weights (and batch-norm statistics from
    random data) to path: a model file with the real shapes, for timing."""
    import torch

    from .checkpoint import save_checkpoint
    from .data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
    from .export import export_model
    from .models import build_model
    torch.manual_seed(0)
    model = build_model(kind).train()
    with torch.no_grad():
        model(torch.randn(32, 3, 32, 32))
    ckpt = Path(path).with_suffix(".safetensors")
    save_checkpoint(ckpt, model.eval(), {"model_config": model.config.to_dict(),
                                         "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD),
                                         "classes": list(CIFAR10_CLASSES)})
    export_model(ckpt, path)
    return str(path)


def profiled_runs(engine, images, repeats: int):
    """Seconds of `repeats` whole-network runs (after a warm-up run) and the median per-op
    profile (seconds per graph op) over them: interleaved_rounds with no PyTorch runs."""
    totals, per_op, _ = interleaved_rounds(engine, images, [], repeats, progress=False)
    return list(totals), np.median(per_op, axis=0)


def interleaved_rounds(engine, images, torch_runs, repeats: int, progress: bool = True):
    """`repeats` rounds, each one profiled whole-network run of the engine, then each of
    `torch_runs` twice, timed the second time, so that every ratio compares two times taken
    seconds apart, not minutes: this VM's pace drifts by 10-30% within minutes. (A PyTorch conv
    called right after one of another shape can take 25% longer, its output's pages fresh from
    the allocator; called twice, it runs as in a loop of itself.) Returns the engine's seconds
    per round, its per-op profile per round [round][op] and the seconds of each torch run per
    round [round][run]."""
    from tqdm import tqdm
    engine._native.set_profiling(True)
    engine.run(images)
    totals, per_op, torch_times = [], [], []
    for _ in tqdm(range(repeats), desc="rounds (engine, then PyTorch)", disable=not progress):
        t = time.perf_counter()
        engine.run(images)
        totals.append(time.perf_counter() - t)
        per_op.append(engine._native.last_profile())
        row = []
        for run in torch_runs:
            run()
            t = time.perf_counter()
            run()
            row.append(time.perf_counter() - t)
        torch_times.append(row)
    engine._native.set_profiling(False)
    return np.array(totals), np.array(per_op), np.array(torch_times)


def bench_kernels(model_path, batch=128, threads=1, repeats=5, isa=None, progress=True) -> dict:
    """Per binary conv layer: engine time inside the fused whole-network run (per-op profile)
    vs torch.nn.functional.conv2d in FP32 on the same shape (channels-last, PyTorch's faster
    layout here); binary GMAC/s; share of peak. Engine and PyTorch are timed in interleaved
    rounds (interleaved_rounds): each speed-up is the median of the per-round ratios, with their
    range; times are medians over the rounds."""
    import torch

    from .engine import Engine, _engine, implementations
    from .filemodel import FileModel
    torch.set_num_threads(threads)
    ops = mf.read_model(model_path)
    engine = Engine.load(model_path, threads=threads, isa=isa)
    images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    shapes = mf.layer_shapes(ops)
    binary = [(j, i, op, h, w) for j, (i, op, h, w) in enumerate(shapes) if op.kind == mf.BCONV]

    def conv(op, h, w):
        cin, cout, k, stride, pad = op.params[:5]
        x = torch.randn(batch, cin, h, w).to(memory_format=torch.channels_last)
        weight = torch.randn(cout, cin, k, k).to(memory_format=torch.channels_last)
        return lambda: torch.nn.functional.conv2d(x, weight, None, stride, pad)

    fp32 = FileModel.load(model_path, binary_as_float=True).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    runs = [lambda: fp32(x)] + [conv(op, h, w) for _, _, op, h, w in binary]
    with torch.no_grad():
        totals, per_op, torch_times = interleaved_rounds(engine, images, runs, repeats, progress)
    peak = _engine.peak_binary_macs(engine.isa, 1.0)
    xor_isa = xor_peak_isa(implementations())
    xor_peak = peak if engine.isa not in PEAK_LOOPS else _engine.peak_binary_macs(xor_isa, 1.0)
    rows = []
    for n, (j, i, op, h, w) in enumerate(binary):
        cin, cout, k, stride, pad = op.params[:5]
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        macs = batch * ho * wo * cout * cin * k * k
        t_engine, t_torch = float(np.median(per_op[:, j])), float(np.median(torch_times[:, n + 1]))
        ratios = torch_times[:, n + 1] / per_op[:, j]
        rows.append({"op": i, "cin": cin, "cout": cout, "stride": stride, "in_hw": [h, w],
                     "macs": macs, "engine_ms": 1e3 * t_engine, "torch_fp32_ms": 1e3 * t_torch,
                     "speedup": float(np.median(ratios)),
                     "speedup_range": [float(ratios.min()), float(ratios.max())],
                     "binary_gmacs": macs / t_engine / 1e9,
                     "peak_fraction": macs / t_engine / peak, "xor_peak_fraction": macs / t_engine / xor_peak})
    others = [{"op": i, "kind": mf.OP_NAMES[op.kind], "params": list(op.params[:2]),
               "engine_ms": 1e3 * float(np.median(per_op[:, j]))}  # the float stem conv, the head
              for j, (i, op, _, _) in enumerate(shapes) if op.kind != mf.BCONV]
    network = torch_times[:, 0] / totals
    return {"machine": {"cpu": cpu_name(), "isa": engine.isa, "threads": threads,
                        "torch": torch.__version__},
            "batch": batch, "repeats": repeats, "peak_binary_gmacs": peak / 1e9,
            "xor_peak_isa": xor_isa, "xor_peak_binary_gmacs": xor_peak / 1e9,
            "engine_total_ms": 1e3 * float(np.median(totals)),
            "torch_fp32_total_ms": 1e3 * float(np.median(torch_times[:, 0])),
            "network_speedup": float(np.median(network)),
            "network_speedup_range": [float(network.min()), float(network.max())],
            "layers": rows, "other_ops": others}


# Implementations whose peak_loop is not the XOR-popcount one: what it times (the "% of peak"
# column is relative to it; their tables add a "% of XOR-popcount peak" column).
_TILE_LOOP = "register-only int8 tile-product loop, TDPBSSD"
PEAK_LOOPS = {"amx": _TILE_LOOP, "amx+avx512": _TILE_LOOP}
XOR_PEAK_LOOP = "register-only XOR-popcount loop"


def xor_peak_isa(impls: list[dict]) -> str:
    """The implementation whose peak is the XOR-popcount yardstick (the issue's 50% target): the
    best supported automatic one with an XOR-popcount peak loop. Implementations with another
    peak loop (amx, amx+avx512) are compared with it as well."""
    return next(i["name"] for i in impls
                if i["supported"] and i["automatic"] and i["name"] not in PEAK_LOOPS)


def format_kernels(result: dict) -> str:
    m = result["machine"]
    other = m["isa"] in PEAK_LOOPS  # a peak loop other than XOR-popcount: show both
    lines = [f"model: {result.get('model_file', '?')}",
             f"binary conv layers, batch {result['batch']}, {m['threads']} thread(s), ISA {m['isa']}, "
             f"{m['cpu']}; {result['repeats']} interleaved rounds (engine, then PyTorch), medians",
             f"peak ({PEAK_LOOPS.get(m['isa'], XOR_PEAK_LOOP)}): "
             f"{result['peak_binary_gmacs']:.0f} binary GMAC/s"]
    if other:
        lines.append(f"XOR-popcount peak ({XOR_PEAK_LOOP}, {result['xor_peak_isa']}): "
                     f"{result['xor_peak_binary_gmacs']:.0f} binary GMAC/s")
    extra = " % of XOR-popcount peak |" if other else ""
    lines += ["",
              "| op | cin -> cout | stride | input | engine ms | PyTorch FP32 ms | speed-up | rounds' range "
              "| binary GMAC/s | % of peak |" + extra,
              "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if other else "")]
    for r in result["layers"]:
        lines.append(f"| {r['op']} | {r['cin']} -> {r['cout']} | {r['stride']} | {r['in_hw'][0]}x{r['in_hw'][1]} "
                     f"| {r['engine_ms']:.2f} | {r['torch_fp32_ms']:.2f} | {r['speedup']:.1f}x "
                     f"| {_range(r['speedup_range'])} "
                     f"| {r['binary_gmacs']:.0f} | {100 * r['peak_fraction']:.0f}% |"
                     + (f" {100 * r['xor_peak_fraction']:.0f}% |" if other else ""))
    e, t = result["engine_total_ms"], result["torch_fp32_total_ms"]
    lines.append(f"\nwhole network per batch: engine {e:.1f} ms, PyTorch FP32 network of the same "
                 f"shape {t:.1f} ms -> {result['network_speedup']:.1f}x "
                 f"(rounds: {_range(result['network_speedup_range'])})")
    binary = sum(r["engine_ms"] for r in result["layers"])
    parts = [f"binary convs {binary:.1f} ms ({100 * binary / e:.0f}%)"]
    for o in result.get("other_ops", []):
        shape = " -> ".join(map(str, o["params"]))
        kind = {"conv_fp": "float conv"}.get(o["kind"], o["kind"])
        parts.append(f"op {o['op']} {kind} {shape} {o['engine_ms']:.1f} ms ({100 * o['engine_ms'] / e:.0f}%)")
    rest = e - binary - sum(o["engine_ms"] for o in result.get("other_ops", []))
    parts.append(f"input conversion and the rest {rest:.1f} ms")
    lines.append("engine time by part: " + ", ".join(parts))
    return "\n".join(lines)


def _range(r) -> str:
    return f"{r[0]:.1f}-{r[1]:.1f}x"


def plot_kernels(result: dict, path, targets=(15.0, 0.5)) -> None:
    """Two bar charts per binary conv layer: speed-up over the PyTorch FP32 conv and share of the
    XOR-popcount peak, each with the issue's target as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["layers"]
    labels = [f"op {r['op']}\n{r['cin']}->{r['cout']}" + (f"\ns{r['stride']}" if r["stride"] > 1 else "")
              for r in rows]
    xs = np.arange(len(rows))
    fig, (ax_speed, ax_peak) = plt.subplots(1, 2, figsize=(14, 4.8))
    speed = np.array([r["speedup"] for r in rows])
    spread = np.array([r["speedup_range"] for r in rows]).T  # the rounds' lowest and highest
    ax_speed.bar(xs, speed, yerr=[speed - spread[0], spread[1] - speed], capsize=3, color="tab:blue",
                 label="median of the rounds (bars: their range)")
    ax_speed.axhline(targets[0], color="tab:red", ls="--", label=f"target {targets[0]:.0f}x")
    ax_speed.set(ylabel="x PyTorch FP32 conv", title="speed-up over PyTorch FP32, same shape")
    ax_peak.bar(xs, [100 * r["xor_peak_fraction"] for r in rows], color="tab:green")
    ax_peak.axhline(100 * targets[1], color="tab:red", ls="--", label=f"target {100 * targets[1]:.0f}%")
    ax_peak.set(ylabel="% of peak", title=f"share of the XOR-popcount peak "
                f"({result['xor_peak_binary_gmacs']:.0f} binary GMAC/s)")
    for ax in (ax_speed, ax_peak):
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    m = result["machine"]
    fig.suptitle(f"binary conv layers, batch {result['batch']}, {m['threads']} thread(s), "
                 f"{m['isa']}, {m['cpu']}: whole network "
                 f"{result['network_speedup']:.1f}x PyTorch FP32")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
