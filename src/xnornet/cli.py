"""Command line: ``xnornet train|eval|summary``. A thin layer over the library modules."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import XnornetError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


MODEL_CHOICES = ["fp32", "baseline", "xnor", "bireal"]


def _add_trunk_args(p):
    from .config import TrunkConfig
    fmt = lambda v: ",".join(map(str, v))  # noqa: E731
    p.add_argument("--widths", type=_ints, default=TrunkConfig.widths,
                   help=f"channels per stage (default {fmt(TrunkConfig.widths)})")
    p.add_argument("--depths", type=_ints, default=TrunkConfig.depths,
                   help=f"blocks per stage (default {fmt(TrunkConfig.depths)})")


def add_train(sub):
    p = sub.add_parser("train", help="train a model on CIFAR-10",
                       description="Train fp32 (alias baseline), xnor or bireal on CIFAR-10. Writes "
                       "checkpoint.safetensors, model.safetensors, metrics.jsonl/.csv and "
                       "curves.png to --out after every epoch.")
    p.add_argument("--model", choices=MODEL_CHOICES, default="bireal")
    p.add_argument("--epochs", type=_positive, default=20)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 0.1 with SGD, 2e-3 with Adam)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help="default: sgd for fp32, adam (AdamW) for binary models")
    p.add_argument("--batch-size", type=_positive, default=128)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--kd", action="store_true", help="distil from --teacher-path")
    p.add_argument("--teacher-path", help="checkpoint (model.safetensors) of the fp32 teacher")
    p.add_argument("--kd-alpha", type=float, default=0.5,
                   help="loss = a*CE + (1-a)*T^2*KL (default a=0.5)")
    p.add_argument("--kd-temperature", type=float, default=3.0, help="KD temperature T (default 3)")
    p.add_argument("--data-dir", help="CIFAR-10 folder (default: $XNORNET_DATA, else the user cache)")
    p.add_argument("--out", default=None, help="output folder (default runs/<model>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=_positive, default=None,
                   help="use only the first N training and N test images (smoke runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoint.safetensors if it exists")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bfloat16 autocast; auto = where the CPU/GPU supports bf16 natively")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the model; auto = on unless --subset")
    _add_trunk_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_train(a) -> int:
    from .train import TrainConfig, train
    cfg = TrainConfig(model=a.model, epochs=a.epochs, lr=a.lr, optimizer=a.optimizer,
                      batch_size=a.batch_size, weight_decay=a.weight_decay,
                      warmup_epochs=a.warmup_epochs, label_smoothing=a.label_smoothing, kd=a.kd,
                      teacher_path=a.teacher_path, kd_alpha=a.kd_alpha,
                      kd_temperature=a.kd_temperature, data_dir=a.data_dir,
                      out=a.out or f"runs/{a.model}", seed=a.seed, subset=a.subset,
                      resume=a.resume, amp=a.amp, compile=a.compile, widths=a.widths,
                      depths=a.depths, progress=not a.no_progress)
    row = train(cfg)
    if row:
        print(f"done: test accuracy {row['test_acc']:.4f} after {row['epoch']} epochs; "
              f"outputs in {cfg.out}")
    return 0


def add_eval(sub):
    p = sub.add_parser("eval", help="top-1 accuracy of a checkpoint on the CIFAR-10 test set")
    p.add_argument("--checkpoint", required=True, help="model.safetensors or checkpoint.safetensors")
    p.add_argument("--data-dir")
    p.add_argument("--subset", type=_positive, default=None, help="first N test images only")
    p.add_argument("--batch-size", type=_positive, default=500)
    p.add_argument("--json", dest="json_out", help="write {accuracy, n, loss, ...} here")


def run_eval(a) -> int:
    import torch

    from . import data as xdata
    from .checkpoint import load_model
    from .train import evaluate
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_model(a.checkpoint, device)
    ds = xdata.load_cifar10(a.data_dir)
    split = ds.test.head(a.subset)
    acc, loss = evaluate(model, split, device, meta["mean"], meta["std"], a.batch_size)
    result = {"accuracy": acc, "n": len(split), "loss": loss, "checkpoint": str(a.checkpoint),
              "model": meta["model_config"]["kind"], "data": ds.source}
    print(f"{result['model']}: top-1 {100 * acc:.2f}% on {len(split)} test images ({ds.source})")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def add_summary(sub):
    p = sub.add_parser("summary", help="per-layer table: params, bits, memory, MACs")
    p.add_argument("--model", choices=MODEL_CHOICES, default="bireal")
    p.add_argument("--checkpoint", help="summarize this checkpoint's model instead")
    _add_trunk_args(p)


def run_summary(a) -> int:
    from .models import build_model
    from .summary import format_summary
    if a.checkpoint:
        from .checkpoint import load_model
        model, _ = load_model(a.checkpoint)
    else:
        model = build_model(a.model, widths=a.widths, depths=a.depths)
    print(format_summary(model, f"model: {model.config.kind}  widths {model.config.widths}  "
                                f"depths {model.config.depths}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xnornet", description="Binary neural networks: train "
                                     "XNOR-Net / Bi-Real models on CIFAR-10 and run them bitwise.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_eval, add_summary):
        add(sub)
    return parser


COMMANDS = {"train": run_train, "eval": run_eval, "summary": run_summary}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (XnornetError, ValueError, FileNotFoundError) as e:
        print(f"xnornet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
