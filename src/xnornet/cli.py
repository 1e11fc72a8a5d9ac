"""Command line: ``xnornet train|eval|export|bench|predict|summary``. A thin layer over the
library modules; heavy imports (torch, the engine) happen inside the commands that need them."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ALIASES, MODEL_KINDS
from .errors import XnornetError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _thread_counts(text: str) -> tuple[int, ...]:
    counts = _ints(text)
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return counts


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


MODEL_CHOICES = list(MODEL_KINDS) + sorted(ALIASES)
DATA_DIR_HELP = ("CIFAR-10 folder: cifar-10-batches-py/ or train/ and test/ image folders "
                 "(default: $XNORNET_DATA, else the user cache, downloaded there if absent)")


def _refuse_unused(*given, reason: str, when: bool = True) -> None:
    """Options that would be ignored are refused, not dropped: ``given`` holds (flag, value)
    pairs, a value of None or False meaning the flag was not given."""
    flags = [flag for flag, value in given if value not in (None, False)]
    if when and flags:
        raise ValueError(f"{', '.join(flags)}: not used here ({reason})")


def _plot_formats() -> set[str]:
    """File extensions matplotlib can write (savefig picks the format from the extension)."""
    from matplotlib.backend_bases import FigureCanvasBase
    return {"." + ext for ext in FigureCanvasBase.get_supported_filetypes()}


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def same_file(a, b) -> bool:
    """Whether two paths name one file: os.path.samefile where both exist (links, other
    spellings), else the same resolved path (a file about to be written)."""
    import os
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_paths(inputs: dict | None = None, **paths) -> None:
    """Output files are written after the work: check at the start that they can be, so a typo
    does not lose a ten-minute run. Keyword: the option's name, value: the path (or None).
    ``inputs``: option name -> path of the files the command reads, which no output may replace;
    no two outputs may be one file either (the second would overwrite the first)."""
    given = {option: path for option, path in paths.items() if path}
    for option, path in given.items():
        flag, p = _flag(option), Path(path)
        if p.is_dir():
            raise ValueError(f"{flag} {p}: is a folder; give a file name")
        if not p.parent.is_dir():
            raise ValueError(f"{flag} {p}: folder {p.parent} does not exist")
        if option.endswith("plot") and p.suffix.lower() not in (formats := _plot_formats()):
            raise ValueError(f"{flag} {p}: unknown image format {p.suffix or '(no extension)'!r}; "
                             f"use one of {', '.join(sorted(formats))}")
    for option, path in given.items():
        for other, src in (inputs or {}).items():
            if src and same_file(path, src):
                raise ValueError(f"{_flag(option)} {path}: is the {_flag(other)} file; writing it "
                                 "would replace the input (give another path)")
    names = list(given)
    for i, option in enumerate(names):
        for other in names[i + 1:]:
            if same_file(given[option], given[other]):
                raise ValueError(f"{_flag(option)} and {_flag(other)} are one file ({given[other]}); "
                                 "give each output its own path")


def _add_trunk_args(p, defaults: bool = True):
    """--widths and --depths; defaults=False leaves them None when not given (the caller
    fills in TrunkConfig's), so that a command can tell whether they were given."""
    from .config import TrunkConfig
    fmt = lambda v: ",".join(map(str, v))  # noqa: E731
    p.add_argument("--widths", type=_ints, default=TrunkConfig.widths if defaults else None,
                   help=f"channels per stage (default {fmt(TrunkConfig.widths)})")
    p.add_argument("--depths", type=_ints, default=TrunkConfig.depths if defaults else None,
                   help=f"blocks per stage (default {fmt(TrunkConfig.depths)})")


def add_train(sub):
    p = sub.add_parser("train", help="train a model on CIFAR-10",
                       description="Train fp32 (alias baseline), xnor or bireal on CIFAR-10. Writes "
                       "checkpoint.safetensors, model.safetensors, metrics.jsonl/.csv and "
                       "curves.png to --out after every epoch.")
    p.add_argument("--model", choices=MODEL_CHOICES, default="bireal")
    p.add_argument("--epochs", type=_positive, default=20, help="default 20")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 0.1 with SGD, 2e-3 with Adam)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help="default: sgd for fp32, adam (AdamW) for binary models")
    p.add_argument("--batch-size", type=_positive, default=128, help="default 128")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default 5e-4 with SGD; with Adam (AdamW) 1e-4, none on binary kernels")
    p.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear learning-rate warm-up before the cosine decay (default 1)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="default 0 (off)")
    p.add_argument("--cutout", type=int, default=0, metavar="N",
                   help="zero a random NxN square of each training image (after normalization: the "
                        "mean colour); 0 <= N < 32; 16 is the usual CIFAR-10 value; 0 (default): off")
    p.add_argument("--real-weights", action="store_true",
                   help="binary activations, real-valued weights: stage 1 of two-stage training "
                   "(xnor, bireal; not exportable). Stage 2: the same model without this flag, "
                   "--init-from <stage 1>/model.safetensors")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (same network) instead of at random; "
                   "ignored when --resume finds a run to continue")
    p.add_argument("--kd", action="store_true", help="distil from --teacher-path")
    p.add_argument("--teacher-path", help="checkpoint (model.safetensors) of the fp32 teacher "
                   "(one of another model kind: used, with a warning)")
    p.add_argument("--kd-alpha", type=float, default=None,
                   help="with --kd: loss = a*CE + (1-a)*T^2*KL (default a=0.5)")
    p.add_argument("--kd-temperature", type=float, default=None,
                   help="with --kd: KD temperature T (default 3)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--out", default=None, help="output folder (default runs/<model>); one that "
                   "already holds a run is refused unless --resume or --overwrite is given")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--subset", type=_positive, default=None,
                   help="use only the first N training and N test images (smoke runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoint.safetensors if it exists, else from "
                   "<out>/model.safetensors (optimizer state afresh, with a warning)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that already holds a run (checkpoint.safetensors "
                   "or model.safetensors), replacing its files")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bfloat16 autocast; auto = where the CPU/GPU supports bf16 natively")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the model; auto = on unless --subset (a smoke run does "
                   "not pay for compiling)")
    _add_trunk_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_train(a) -> int:
    from .train import TrainConfig, train
    _refuse_unused(("--kd-alpha", a.kd_alpha), ("--kd-temperature", a.kd_temperature),
                   reason="they set the distillation loss: add --kd", when=not a.kd)
    kd_knobs = {k: v for k, v in (("kd_alpha", a.kd_alpha), ("kd_temperature", a.kd_temperature))
                if v is not None}
    cfg = TrainConfig(model=a.model, epochs=a.epochs, lr=a.lr, optimizer=a.optimizer,
                      batch_size=a.batch_size, weight_decay=a.weight_decay,
                      warmup_epochs=a.warmup_epochs, label_smoothing=a.label_smoothing,
                      cutout=a.cutout, real_weights=a.real_weights, init_from=a.init_from, kd=a.kd,
                      teacher_path=a.teacher_path, **kd_knobs, data_dir=a.data_dir,
                      out=a.out or f"runs/{ALIASES.get(a.model, a.model)}", seed=a.seed, subset=a.subset,
                      resume=a.resume, overwrite=a.overwrite, amp=a.amp, compile=a.compile,
                      widths=a.widths, depths=a.depths, progress=not a.no_progress)
    row = train(cfg)
    if row:
        print(f"done: test accuracy {row['test_acc']:.4f} after {row['epoch']} epochs; "
              f"outputs in {cfg.out}")
    return 0


def add_eval(sub):
    p = sub.add_parser("eval", help="top-1 accuracy on the CIFAR-10 test set",
                       description="Evaluate a training checkpoint (PyTorch) or a packed model file "
                       "with the native engine or its PyTorch rebuild.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="model.safetensors or checkpoint.safetensors (PyTorch)")
    src.add_argument("--model-file", help="packed model file (.xnor) from `xnornet export` "
                     "(default, when neither is given: the model shipped in the package)")
    p.add_argument("--engine", choices=["native", "torch", "both"], default=None,
                   help="runtime for --model-file: the native engine, the PyTorch model rebuilt "
                   "from the file, or both with their top-1 agreement and largest logit "
                   "difference (default native)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="native engine threads, with --model-file or the shipped model (default: "
                   "OpenMP's, all cores unless $OMP_NUM_THREADS says otherwise)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--subset", type=_positive, default=None, help="first N test images only")
    p.add_argument("--batch-size", type=_positive, default=500, help="default 500")
    p.add_argument("--json", dest="json_out", help="write the result here: accuracy, n, data, the "
                   "model, per-class accuracy and the confusion matrix; also loss for --checkpoint, "
                   "per-runtime accuracies, agreement and largest logit difference for --engine both")
    p.add_argument("--plot", help="write the confusion matrix (PNG) here (with --engine both: the "
                   "native engine's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _checkpoint_evaluator(a):
    import torch

    from .checkpoint import load_model
    from .metrics import accuracy
    from .train import predict
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_model(a.checkpoint, device)

    def run(split):
        preds, loss = predict(model, split, device, meta["mean"], meta["std"], a.batch_size)
        return {"accuracy": accuracy(split.labels, preds), "loss": loss, "checkpoint": str(a.checkpoint),
                "model": meta["model_config"]["kind"], "engine": "torch"}, preds
    return run, meta.get("classes") or []


def _model_file_runtimes(a) -> dict:
    """name -> function(uint8 NHWC images) -> float32 logits, for the runtimes --engine asks for."""
    runtimes = {}
    if a.engine in ("native", "both"):
        from .engine import Engine
        runtimes["native"] = Engine.load(a.model_file, threads=a.threads).run
    if a.engine in ("torch", "both"):
        import torch

        from .filemodel import FileModel
        model = FileModel.load(a.model_file)

        def logits(images):
            with torch.no_grad():
                return model(model.normalize(images)).numpy()
        runtimes["torch"] = logits
    return runtimes


def _model_file_evaluator(a):
    import numpy as np

    from . import modelfile as mf
    from .metrics import accuracy
    classes = mf.class_names(mf.read_model(a.model_file))
    runtimes = _model_file_runtimes(a)

    def run(split):
        from tqdm import tqdm
        preds = {name: [] for name in runtimes}
        max_diff = 0.0
        for i in tqdm(range(0, len(split), a.batch_size), desc=f"eval ({a.engine})", unit="batch",
                      leave=False, disable=a.no_progress):
            outs = {name: f(split.images[i:i + a.batch_size]) for name, f in runtimes.items()}
            for name, out in outs.items():
                preds[name].append(out.argmax(1))
            if len(outs) == 2:
                max_diff = max(max_diff, float(np.abs(outs["native"] - outs["torch"]).max()))
        preds = {name: np.concatenate(p) if p else np.zeros(0, int) for name, p in preds.items()}
        result = {"model_file": str(a.model_file), "engine": a.engine}
        for name, p in preds.items():
            result[f"accuracy_{name}"] = accuracy(split.labels, p)
        first = next(iter(runtimes))
        result["accuracy"] = result[f"accuracy_{first}"]
        if len(preds) == 2:
            result["top1_agreement"] = accuracy(preds["torch"], preds["native"])
            result["max_abs_logit_diff"] = max_diff
        return result, preds[first]
    return run, classes


def run_eval(a) -> int:
    from . import data as xdata
    if a.checkpoint and (a.engine or a.threads):
        raise ValueError("--engine and --threads are for --model-file; a --checkpoint is "
                         "evaluated with PyTorch (export it to run the native engine)")
    a.engine = a.engine or "native"
    _refuse_unused(("--threads", a.threads), reason="it sets the native engine's threads; "
                   "PyTorch uses its own", when=a.engine == "torch")
    check_output_paths(json=a.json_out, plot=a.plot,
                       inputs={"checkpoint": a.checkpoint, "model_file": a.model_file})
    if not a.checkpoint and not a.model_file:
        from .assets import shipped_model
        a.model_file = str(shipped_model())
    # Load the model before the data: a bad model file fails in a second, not after decoding.
    evaluate, classes = _checkpoint_evaluator(a) if a.checkpoint else _model_file_evaluator(a)
    ds = xdata.load_cifar10(a.data_dir, test_only=True, progress=not a.no_progress)
    _check_classes(list(classes), list(ds.classes))
    split = ds.test.head(a.subset)
    result, preds = evaluate(split)
    result.update(n=len(split), data=ds.source)
    result.update(_per_class(ds.classes, split.labels, preds))
    what = result.get("model") or result["model_file"]
    print(f"{what} ({result['engine']}): top-1 {100 * result['accuracy']:.2f}% on {len(split)} "
          f"test images ({ds.source})")
    if "top1_agreement" in result:
        print(f"native {100 * result['accuracy_native']:.2f}%, torch {100 * result['accuracy_torch']:.2f}%; "
              f"top-1 agreement {100 * result['top1_agreement']:.2f}%, largest logit difference "
              f"{result['max_abs_logit_diff']:.2e}")
    from .metrics import format_per_class
    print(format_per_class(result))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if a.plot:
        from .plots import plot_confusion
        plot_confusion(result["confusion"], ds.classes, Path(a.plot),
                       f"{Path(what).name} ({result['engine']}), top-1 {100 * result['accuracy']:.2f}%")
        print(f"wrote {a.plot}")
    return 0


def _check_classes(model: list[str], data: list[str]) -> None:
    """Labels are class indices: the same names in another order would score right answers as
    wrong (refused); other names may be a renaming, or another data set (said, not refused)."""
    if not model or model == data:
        return
    if sorted(model) == sorted(data):
        raise ValueError(f"the model's classes are the data set's in another order: {model} "
                         f"vs {data}; accuracy would count right answers as wrong")
    print(f"note: the model's classes {model} are not the data set's {data}; class i of the "
          "model is scored as class i of the data", file=sys.stderr)


def _per_class(classes, labels, preds) -> dict:
    """Per-class accuracy and the confusion matrix (rows: true class) for the JSON and --plot."""
    from .metrics import confusion_matrix, per_class_report
    n_classes = len(classes)
    if preds.size and preds.max() >= n_classes:
        raise ValueError(f"the model predicts class {preds.max()} but the data set has "
                         f"{n_classes} classes: is this model for another data set?")
    return per_class_report(confusion_matrix(labels, preds, n_classes), list(classes))


def add_export(sub):
    p = sub.add_parser("export", help="write a packed model file (.xnor) from a checkpoint",
                       description="Pack a checkpoint into the engine's model file: binary weights "
                       "1 bit each, batch norms folded (docs/model-format.md).")
    p.add_argument("--checkpoint", required=True, help="model.safetensors or checkpoint.safetensors")
    p.add_argument("--out", required=True, help="output path, e.g. model.xnor")
    p.add_argument("--onnx", help="also write the network as ONNX with standard ops (binary convs "
                   "simulated with +-1 floats) to this path; needs the onnx package")


def run_export(a) -> int:
    from .export import export_model
    check_output_paths(out=a.out, onnx=a.onnx, inputs={"checkpoint": a.checkpoint})
    if a.onnx:
        import onnx  # noqa: F401  (missing: say so before writing the .xnor)
    info = export_model(a.checkpoint, a.out)
    print(f"wrote {info['path']}: {info['bytes']:,} bytes, {info['ops']} ops; FP32 weights "
          f"{info['fp32_weight_bytes']:,} bytes -> {info['ratio']:.1f}x smaller")
    if a.onnx:
        from .onnx_export import export_onnx
        size = export_onnx(a.out, a.onnx)
        print(f"wrote {a.onnx}: {size:,} bytes (ONNX, standard ops)")
    return 0


# Kept here (not imported from e2e_bench) so that `xnornet --help` stays light; a test checks
# that the two lists agree.
ENGINE_NAMES = ("pytorch-fp32", "pytorch-bnn", "onnxruntime-fp32", "onnxruntime-bnn",
                "openvino-bnn", "xnornet")


def add_bench(sub):
    p = sub.add_parser("bench", help="end-to-end comparison vs PyTorch, ONNX Runtime, OpenVINO "
                       "(or `bench kernels`)",
                       description="End to end, each engine in its own subprocess: model bytes, "
                       "top-1 and agreement with pytorch-bnn, latency at batch 1, throughput at "
                       "batch 128, peak RSS, at 1 thread and all cores. `xnornet bench kernels` "
                       "times each binary conv layer instead.")
    p.add_argument("--model-file", help="packed BNN model file (.xnor); default: the shipped model")
    p.add_argument("--teacher", help="FP32 teacher checkpoint (model.safetensors) for the FP32 rows "
                   "(default: the teacher shipped in the package)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--quick", action="store_true", help="1,000 test images, fewer repeats (~1-2 min)")
    p.add_argument("--rounds", type=_positive, default=None,
                   help="time every engine this many times, alternating the order, and report "
                   "medians (default: 3, or 1 with --quick); accuracy is measured once")
    p.add_argument("--engines", default=",".join(ENGINE_NAMES),
                   help=f"comma-separated subset of {','.join(ENGINE_NAMES)}")
    p.add_argument("--threads", type=_thread_counts, default=None,
                   help="comma-separated thread counts to measure (default: 1 and all cores)")
    p.add_argument("--json", dest="json_out", help="write every number and the machine here")
    p.add_argument("--plot", help="write a bar chart (PNG) here")
    bsub = p.add_subparsers(dest="bench")
    k = bsub.add_parser("kernels", help="each binary conv layer: engine vs PyTorch FP32 conv, "
                        "binary GMAC/s, share of the measured XOR-popcount peak",
                        description="Time each binary conv layer of a model inside the whole-network "
                        "run, against a PyTorch FP32 conv of the same shape in the same process, "
                        "the two timed in interleaved rounds; "
                        "report binary GMAC/s and the share of this CPU's peak, measured with a "
                        "register-only loop; then the whole network against the PyTorch FP32 "
                        "network of the same shape, and the engine's time by part (binary convs, "
                        "float stem conv, head, the rest). Options of `xnornet bench` itself "
                        "(before `kernels`) do not apply here.")
    # dests differ from the parent's: argparse would let these defaults overwrite its values
    k.add_argument("--model-file", dest="k_model_file", metavar="MODEL_FILE", help="packed model file (.xnor); default: "
                   "the shipped model (timings do not depend on the weights)")
    k.add_argument("--batch", type=_positive, default=128, help="images per run (default 128)")
    k.add_argument("--threads", dest="k_threads", metavar="THREADS", type=_positive, default=1,
                   help="engine and PyTorch threads (default 1: the per-layer targets are per core)")
    k.add_argument("--repeats", type=_positive, default=5,
                   help="rounds, each one whole-network engine run, then the PyTorch FP32 network "
                   "and each layer's PyTorch conv (each called twice, timed the second time); each "
                   "speed-up is the median of the rounds' ratios, shown with their range (default 5)")
    k.add_argument("--isa", choices=["amx+avx512", "amx", "avx512", "avx2", "generic"], default=None,
                   help="force a kernel implementation (default: $XNORNET_ISA, else the first "
                   "supported of amx+avx512, avx512, avx2, generic; amx only on request)")
    k.add_argument("--json", dest="k_json_out", metavar="JSON_OUT", help="write every number here")
    k.add_argument("--plot", dest="k_plot", metavar="PNG", help="write a per-layer chart here: "
                   "speed-up and share of the XOR-popcount peak, with the targets")


def _run_bench_kernels(a) -> int:
    import tempfile

    # argparse keeps options given before `kernels` for `bench` itself: refuse them, not ignore.
    given = [flag for flag, value in (("--model-file", a.model_file), ("--teacher", a.teacher),
                                      ("--data-dir", a.data_dir), ("--quick", a.quick),
                                      ("--rounds", a.rounds), ("--threads", a.threads),
                                      ("--json", a.json_out), ("--plot", a.plot),
                                      ("--engines", a.engines != ",".join(ENGINE_NAMES)))
             if value]
    if given:
        raise ValueError(f"{', '.join(given)} before `kernels` belong to the end-to-end bench; "
                         "put options after `kernels` (see xnornet bench kernels --help)")
    check_output_paths(json=a.k_json_out, plot=a.k_plot, inputs={"model_file": a.k_model_file})
    if a.k_model_file:  # (the shipped and the random default are Bi-Real: they have them)
        _require_binary_convs(a.k_model_file, "nothing for `bench kernels` to time")
    from .bench import bench_kernels, format_kernels, plot_kernels, random_model_file
    with tempfile.TemporaryDirectory() as tmp:
        from .assets import SHIPPED_MODEL
        model_file = a.k_model_file or _if_file(SHIPPED_MODEL)
        result = bench_kernels(model_file or random_model_file(Path(tmp) / "bireal-random.xnor"),
                               a.batch, a.k_threads, a.repeats, a.isa)
    result["model_file"] = model_file or "default bireal trunk, random weights"
    print(format_kernels(result))
    if a.k_json_out:
        Path(a.k_json_out).write_text(json.dumps(result, indent=2) + "\n")
    if a.k_plot:
        plot_kernels(result, a.k_plot)
    return 0


def _if_file(path: Path) -> str | None:
    """A shipped asset's path, or None when this build does not ship it."""
    return str(path) if path.is_file() else None


def _require_binary_convs(model_file, why: str) -> None:
    from . import modelfile as mf
    if not any(op.kind == mf.BCONV for op in mf.read_model(model_file)):
        raise ValueError(f"--model-file {model_file} has no binary conv layers (an FP32 model?): {why}")


def run_bench(a) -> int:
    if a.bench == "kernels":
        return _run_bench_kernels(a)
    from . import modelfile as mf
    from .e2e_bench import format_table, plot, run_bench as e2e
    check_output_paths(json=a.json_out, plot=a.plot,
                       inputs={"model_file": a.model_file, "teacher": a.teacher})
    engines = [e for e in a.engines.split(",") if e]
    if not engines:
        raise ValueError(f"--engines {a.engines!r}: no engine named; choose from "
                         f"{','.join(ENGINE_NAMES)}")
    unknown = sorted(set(engines) - set(ENGINE_NAMES))
    if unknown:
        raise ValueError(f"unknown engines {unknown}; choose from {','.join(ENGINE_NAMES)}")
    if not a.model_file:
        from .assets import shipped_model
        a.model_file = str(shipped_model())
    # A bad file fails now, not in every engine's subprocess; the BNN rows need a BNN.
    _require_binary_convs(a.model_file, "the bench compares a BNN with the FP32 teacher (--teacher)")
    if a.teacher:
        from .checkpoint import read_metadata
        kind = read_metadata(a.teacher).get("model_config", {}).get("kind")
        if kind != "fp32":  # its rows are labelled, and compared as, the FP32 baseline
            raise ValueError(f"--teacher {a.teacher} holds a {kind or 'model of unknown kind'} "
                             "model, not the fp32 teacher (xnornet train --model fp32)")
    from .assets import SHIPPED_TEACHER
    teacher = a.teacher or _if_file(SHIPPED_TEACHER)
    rounds = a.rounds or (1 if a.quick else 3)
    report = e2e(a.model_file, teacher, a.data_dir, a.quick, tuple(a.threads or (1, None)), engines,
                 rounds=rounds)
    print(format_table(report))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=2) + "\n")
    if a.plot:
        plot(report, a.plot)
    if report.get("failures"):
        print(f"xnornet bench: error: {len(report['failures'])} engine run(s) failed (above)",
              file=sys.stderr)
        return 1
    return 0


def add_predict(sub):
    p = sub.add_parser("predict", help="classify image files with a packed model (top-k classes)",
                       description="Classify image files (any format Pillow reads; resized to the "
                       "model's input size) with the native engine.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model-file", help="packed model file (default: the shipped model)")
    p.add_argument("--top", type=_positive, default=3, help="classes to show per image (default 3)")
    p.add_argument("--json", dest="json_out", help="write the predictions here")


def run_predict(a) -> int:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from . import modelfile as mf
    from .assets import shipped_model
    from .data import to_rgb
    from .engine import Engine
    check_output_paths(json=a.json_out)
    model_file = a.model_file or shipped_model()
    engine = Engine.load(model_file)
    first = mf.read_model(model_file)[0]
    if first.kind != mf.INPUT:
        raise ValueError(f"{model_file} has no input op: it cannot take image files")
    h, w = first.params[:2]
    batch = []
    for path in a.images:
        try:
            with Image.open(path) as im:
                rgb = Image.fromarray(to_rgb(im))  # upright, 16-bit scaled: as in training data
            batch.append(np.asarray(rgb.resize((w, h), Image.BILINEAR)))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
    logits = engine.run(np.stack(batch))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    names = engine.class_names or [str(i) for i in range(logits.shape[1])]
    out = []
    for path, p in zip(a.images, probs):
        top = np.argsort(-p)[:a.top]
        out.append({"image": path, "top": [{"class": names[i], "probability": float(p[i])} for i in top]})
        print(f"{path}: " + ", ".join(f"{names[i]} {100 * p[i]:.1f}%" for i in top))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def add_summary(sub):
    p = sub.add_parser("summary", help="per-layer table: params, bits, memory, MACs",
                       description="Per-layer table of a model (by name, or a checkpoint's; needs "
                       "torch) or of a packed model file (numpy only).")
    p.add_argument("--model", choices=MODEL_CHOICES, default=None, help="default bireal")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="summarize this checkpoint's model instead")
    src.add_argument("--model-file", help="summarize this packed model file (.xnor) instead: ops, "
                     "shapes, bytes, MACs, class names")
    _add_trunk_args(p, defaults=False)


def run_summary(a) -> int:
    _refuse_unused(("--model", a.model), ("--widths", a.widths), ("--depths", a.depths),
                   reason="the network is the one in the given file",
                   when=bool(a.checkpoint or a.model_file))
    if a.model_file:
        from .filesummary import format_model_file
        print(format_model_file(a.model_file))
        return 0
    from .models import build_model
    from .summary import format_summary
    if a.checkpoint:
        from .checkpoint import load_model
        model, _ = load_model(a.checkpoint)
    else:
        from .config import TrunkConfig
        model = build_model(a.model or "bireal", widths=a.widths or TrunkConfig.widths,
                            depths=a.depths or TrunkConfig.depths)
    print(format_summary(model, f"model: {model.config.kind}  widths {model.config.widths}  "
                                f"depths {model.config.depths}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xnornet", description="Binary neural networks: train "
                                     "XNOR-Net / Bi-Real models on CIFAR-10 and run them bitwise.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"xnornet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_eval, add_export, add_bench, add_predict, add_summary):
        add(sub)
    return parser


COMMANDS = {"train": run_train, "eval": run_eval, "export": run_export, "bench": run_bench,
            "predict": run_predict, "summary": run_summary}


# Optional packages -> the extra that installs them (pyproject.toml).
OPTIONAL = {"torch": "train", "matplotlib": "train", "onnx": "onnx",
            "onnxruntime": "bench", "openvino": "bench"}


def _user_error(e: BaseException) -> bool:
    """Errors a user causes and can fix from a one-line message; anything else (a bug, a broken
    install) keeps its traceback. XNORNET_DEBUG=1: tracebacks for everything."""
    import os
    if os.environ.get("XNORNET_DEBUG"):
        return False
    if isinstance(e, ModuleNotFoundError):
        return (e.name or "").split(".")[0] in OPTIONAL
    # OSError: only about a file or folder the user named (missing, unreadable, a folder, ...)
    return isinstance(e, (XnornetError, ValueError, FileNotFoundError)) or (
        isinstance(e, OSError) and e.filename is not None)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 1
    except (XnornetError, ValueError, OSError, ModuleNotFoundError) as e:
        if not _user_error(e):
            raise
        hint = ""
        if isinstance(e, ModuleNotFoundError):
            hint = f". This command needs it: pip install 'xnornet[{OPTIONAL[e.name.split('.')[0]]}]'"
        print(f"xnornet {args.command}: error: {e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
