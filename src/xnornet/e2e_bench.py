"""`xnornet bench`: the end-to-end comparison. Every engine runs in its own fresh subprocess (so
one engine's imports and allocations never count against another's peak memory), on the same
packed model file (BNN rows) or FP32 teacher (FP32 rows) and the same CIFAR-10 test images.

Rows: pytorch-fp32 (teacher, eager), pytorch-bnn (the BNN simulated with +-1 floats, rebuilt from
the file), onnxruntime-fp32, onnxruntime-bnn (standard ONNX ops), openvino-bnn (opset1
BinaryConvolution, OpenVINO's x86 binary kernel), xnornet (our engine). A row whose package is
missing is skipped with a note.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .bench import median_time

ENGINES = ("pytorch-fp32", "pytorch-bnn", "onnxruntime-fp32", "onnxruntime-bnn", "openvino-bnn",
           "xnornet")
FP32_ENGINES = ("pytorch-fp32", "onnxruntime-fp32")
NEEDS = {"pytorch-fp32": "torch", "pytorch-bnn": "torch", "onnxruntime-fp32": "onnxruntime",
         "onnxruntime-bnn": "onnxruntime", "openvino-bnn": "openvino", "xnornet": "numpy"}


# ---------------------------------------------------------------- worker (one engine, one process)

def _runner(engine: str, model_file: str, fp32_file: str, threads: int, workdir: Path):
    """-> (predict-logits function on uint8 NHWC images, model bytes on disk)."""
    from . import modelfile as mf
    path = fp32_file if engine in FP32_ENGINES else model_file
    ops = mf.read_model(path)
    if engine.startswith("pytorch"):
        import torch
        torch.set_num_threads(threads)
        from .filemodel import FileModel
        model = FileModel(ops).to(memory_format=torch.channels_last)

        def run(images):
            with torch.no_grad():
                return model(model.normalize(images).contiguous(memory_format=torch.channels_last)).numpy()
        return run, Path(path).stat().st_size
    mean = std = None
    for op in ops:
        if op.kind == mf.INPUT:
            mean, std = (np.asarray(t, np.float32).reshape(1, -1, 1, 1) for t in op.tensors)

    def normalize(images):
        return np.ascontiguousarray(((images.transpose(0, 3, 1, 2) / np.float32(255)) - mean) / std,
                                    dtype=np.float32)
    if engine.startswith("onnxruntime"):
        import onnx
        import onnxruntime as ort
        from .onnx_export import to_onnx
        onnx_path = workdir / f"{engine}.onnx"
        onnx.save(to_onnx(ops), str(onnx_path))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        return (lambda images: session.run(None, {"images": normalize(images)})[0]), onnx_path.stat().st_size
    if engine == "openvino-bnn":
        import openvino as ov
        from .openvino_model import to_openvino
        core = ov.Core()
        cfg = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        compiled = {}  # static shapes: OpenVINO's binary conv needs them; one model per batch size
        xml = workdir / "openvino-bnn.xml"
        ov.save_model(to_openvino(ops, batch=1), str(xml), compress_to_fp16=False)
        size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size

        def run(images):
            n = len(images)
            if n not in compiled:
                compiled[n] = core.compile_model(to_openvino(ops, batch=n), "CPU", cfg)
            return compiled[n](normalize(images))[0]
        return run, size
    from .engine import Engine
    engine_ = Engine.load(model_file, threads=threads)
    return engine_.run, Path(model_file).stat().st_size


def peak_rss_kib() -> int:
    """Peak resident memory of this process image. VmHWM, not getrusage's ru_maxrss, which Linux
    carries across exec from the forking parent (here: the orchestrator holding the data set)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


IMAGE_SHAPE = (32, 32, 3)


def read_images(path, n_total: int, start: int, count: int) -> np.ndarray:
    """Images start..start+count (clipped to n_total) of a raw uint8 NHWC file."""
    count = max(0, min(count, n_total - start))
    size = int(np.prod(IMAGE_SHAPE))
    flat = np.fromfile(path, dtype=np.uint8, count=count * size, offset=start * size)
    return flat.reshape(count, *IMAGE_SHAPE)


def worker(args: dict) -> dict:
    """Measure one engine at one thread count. args: engine, model_file, fp32_file, threads,
    test_images (raw uint8 NHWC file), test_labels (.npy), accuracy (bool: run the accuracy pass),
    repeats, latency_repeats, batch."""
    with tempfile.TemporaryDirectory() as tmp:
        run, size = _runner(args["engine"], args["model_file"], args["fp32_file"], args["threads"],
                            Path(tmp))
        labels = np.load(args["test_labels"])
        # Images are read from the raw file 500 at a time, so the peak memory is the engine's
        # (the whole test set would add 30 MB to every row, and np.load's copy as much again).
        read = functools.partial(read_images, args["test_images"], len(labels))
        preds = None
        if args.get("accuracy", True):
            preds = np.concatenate([run(read(i, 500)).argmax(1) for i in range(0, len(labels), 500)])
        one = read(0, 1)
        big = np.resize(read(0, args["batch"]), (args["batch"], *one.shape[1:]))
        latency = median_time(lambda: run(one), args["latency_repeats"])
        throughput = args["batch"] / median_time(lambda: run(big), args["repeats"])
    rss_kb = peak_rss_kib()
    return {"engine": args["engine"], "threads": args["threads"], "batch": args["batch"],
            "images_per_s": throughput, "latency_ms": 1e3 * latency, "peak_rss_mb": rss_kb / 1024,
            "accuracy": None if preds is None else float((preds == labels).mean()),
            "n": int(len(labels)), "model_bytes": size,
            "predictions": None if preds is None else preds.tolist()}


# ---------------------------------------------------------------- orchestrator

def machine_info() -> dict:
    from .bench import cpu_name
    from .engine import cpu_features
    versions = {}
    for pkg in ("numpy", "torch", "onnxruntime", "openvino"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except ImportError:
            versions[pkg] = None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "cpu_features": cpu_features(), "versions": versions}


def _available(engine: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(NEEDS[engine]) is not None


TIMED = ("images_per_s", "latency_ms", "peak_rss_mb")


def summarize_rounds(row: dict) -> None:
    """Speed columns: the median over rounds. Peak memory: the largest, which is the first round's
    (only it runs the accuracy pass, with its larger batches)."""
    for k in ("images_per_s", "latency_ms"):
        row[k] = float(np.median(row[f"{k}_rounds"]))
    row["peak_rss_mb"] = float(max(row["peak_rss_mb_rounds"]))


def run_bench(model_file, fp32_file, data_dir=None, quick=False, threads_list=(1, None),
              engines=ENGINES, progress=True, rounds=1) -> dict:
    """rounds > 1: after the first round (which also measures accuracy), every engine is timed
    again rounds-1 times, in alternating order, and each speed column is the median over rounds
    (engines run minutes apart, and a shared machine's speed drifts in between); peak memory is
    the largest over rounds."""
    from tqdm import tqdm

    from . import data as xdata
    ds = xdata.load_cifar10(data_dir, progress=progress, test_only=True)
    n = 1000 if quick else len(ds.test)
    threads_list = [t or os.cpu_count() for t in threads_list]
    threads_list = sorted(set(threads_list), key=threads_list.index)
    notes, failures, results = [], [], []  # notes: engines skipped; failures: runs that broke
    jobs = []
    for engine in engines:
        if not _available(engine):
            notes.append(f"{engine}: skipped, package '{NEEDS[engine]}' is not installed")
        elif engine in FP32_ENGINES and not fp32_file:
            notes.append(f"{engine}: skipped, no FP32 teacher model given")
        else:
            jobs += [(engine, t) for t in threads_list]
    with tempfile.TemporaryDirectory() as tmp:
        images_file, labels_file = Path(tmp) / "test-images.u8", Path(tmp) / "test-labels.npy"
        if ds.test.images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"bench expects {IMAGE_SHAPE} images, got {ds.test.images.shape[1:]}")
        np.ascontiguousarray(ds.test.images[:n]).tofile(images_file)
        np.save(labels_file, ds.test.labels[:n])
        fp32_xnor = None
        if fp32_file:  # FP32 rows run the teacher packed the same way (exact FP32 weights)
            from .export import export_model
            fp32_xnor = str(Path(tmp) / "teacher.xnor")
            export_model(fp32_file, fp32_xnor)
        schedule = [(r, job) for r in range(max(1, rounds))
                    for job in (jobs if r % 2 == 0 else jobs[::-1])]
        by_job: dict[tuple, dict] = {}
        for r, (engine, threads) in tqdm(schedule, desc="bench", unit="run", disable=not progress):
            if r > 0 and (engine, threads) not in by_job:
                continue  # failed in the first round
            args = {"engine": engine, "model_file": str(model_file), "fp32_file": fp32_xnor,
                    "threads": threads, "test_images": str(images_file),
                    "test_labels": str(labels_file), "batch": 128, "accuracy": r == 0,
                    "repeats": 3 if quick else 7, "latency_repeats": 20 if quick else 100}
            proc = subprocess.run([sys.executable, "-m", "xnornet.e2e_bench", json.dumps(args)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                failures.append(f"{engine} ({threads} threads), round {r + 1}: {last}")
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            if r == 0:
                by_job[(engine, threads)] = {**row, **{f"{k}_rounds": [row[k]] for k in TIMED}}
                results.append(by_job[(engine, threads)])
            else:
                for k in TIMED:
                    by_job[(engine, threads)][f"{k}_rounds"].append(row[k])
        for row in results:
            summarize_rounds(row)
    reference = {r["threads"]: r["predictions"] for r in results if r["engine"] == "pytorch-bnn"}
    for r in results:
        ref = reference.get(r["threads"])
        if ref is not None and r["engine"] not in FP32_ENGINES:
            r["agreement_with_pytorch_bnn"] = float(np.mean(np.array(r["predictions"]) == np.array(ref)))
        del r["predictions"]
    return {"machine": machine_info(), "model_file": str(model_file), "fp32_model": str(fp32_file),
            "data": f"{ds.source}, first {n} test images", "rounds": max(1, rounds),
            "results": results, "notes": notes, "failures": failures,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def format_table(report: dict) -> str:
    rows = report["results"]
    base = {r["threads"]: r for r in rows if r["engine"] == "pytorch-fp32"}
    lines = [f"data: {report['data']}", f"machine: {report['machine']['cpu']}, "
             f"{report['machine']['cores']} cores", "",
             "| engine | threads | model bytes | top-1 | agrees w/ pytorch-bnn | latency b=1 (ms) "
             "| images/s b=128 | vs pytorch-fp32 | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get(r["threads"])
        speed = f"{r['images_per_s'] / b['images_per_s']:.1f}x" if b else "-"
        agree = r.get("agreement_with_pytorch_bnn")
        lines.append(f"| {r['engine']} | {r['threads']} | {r['model_bytes']:,} | {100 * r['accuracy']:.2f}% "
                     f"| {'-' if agree is None else f'{100 * agree:.2f}%'} | {r['latency_ms']:.2f} "
                     f"| {r['images_per_s']:.0f} | {speed} | {r['peak_rss_mb']:.0f} |")
    lines += [f"note: {n}" for n in report["notes"]]
    lines += [f"failed: {f}" for f in report.get("failures", [])]
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = report["results"]
    threads = sorted({r["threads"] for r in rows})
    engines = [e for e in ENGINES if any(r["engine"] == e for r in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / max(1, len(threads))
    for j, t in enumerate(threads):
        by = {r["engine"]: r for r in rows if r["threads"] == t}
        xs = np.arange(len(engines)) + j * width
        axes[0].bar(xs, [by[e]["images_per_s"] if e in by else 0 for e in engines], width, label=f"{t} thread(s)")
        axes[1].bar(xs, [by[e]["latency_ms"] if e in by else 0 for e in engines], width, label=f"{t} thread(s)")
        axes[2].bar(xs, [by[e]["peak_rss_mb"] if e in by else 0 for e in engines], width, label=f"{t} thread(s)")
    for ax, title in zip(axes, ["throughput, batch 128 (images/s, log)", "latency, batch 1 (ms, log)",
                                "peak resident memory (MB)"]):
        ax.set_xticks(np.arange(len(engines)) + width * (len(threads) - 1) / 2)
        ax.set_xticklabels(engines, rotation=30, ha="right")
        ax.set_title(title)
        ax.legend()
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    fig.suptitle(f"xnornet bench — {report['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":  # the per-engine subprocess
    print(json.dumps(worker(json.loads(sys.argv[1]))))
