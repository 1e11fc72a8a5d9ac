"""Training loop: data in memory, batched augmentation, KD, per-epoch atomic checkpoints, resume, DDP.

Reads top to bottom: config -> setup (device, data, model, optimizer) -> epochs -> outputs.
Outputs in ``out``: checkpoint.safetensors (last epoch, with optimizer state, for --resume),
model.safetensors (weights + metadata, for eval/export), metrics.jsonl, metrics.csv, curves.png.
Multi-process: launch with ``torchrun --nproc_per_node K -m xnornet train ...``; each process takes
every K-th sample of the epoch's permutation and gradients are averaged by DDP (gloo on CPU,
nccl on CUDA). Only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import data as xdata
from .checkpoint import load_model, read_checkpoint, read_metadata, save_checkpoint
from .export import check_checkpoint_path
from .layers import QuantConv2d, clip_latent_weights
from .metrics import accuracy
from .config import ALIASES, TrunkConfig
from .models import build_model
from .transforms import cutout, normalize, random_crop_flip


@dataclass
class TrainConfig:
    model: str = "bireal"
    epochs: int = 20
    lr: float | None = None          # None: 0.1 for SGD (fp32), 2e-3 for Adam (binary models)
    optimizer: str | None = None     # None: "sgd" for fp32, "adam" for binary models
    batch_size: int = 128
    weight_decay: float | None = None  # None: 5e-4 for SGD; Adam: 0 on binary kernels, 1e-4 elsewhere
    warmup_epochs: float = 1.0       # linear warm-up, then cosine decay to 0 at the last step
    label_smoothing: float = 0.0
    cutout: int = 0                  # side of the square cut from each training image; 0: off
    real_weights: bool = False       # stage 1 of two-stage training: binary activations only
    init_from: str | None = None     # start from this checkpoint's weights (stage 2), not at random
    kd: bool = False
    teacher_path: str | None = None
    kd_alpha: float = 0.5            # loss = a*CE + (1-a)*T^2*KL(teacher || student)
    kd_temperature: float = 3.0
    data_dir: str | None = None
    out: str = "runs/run"
    seed: int = 0
    subset: int | None = None        # first N train and N test images (smoke runs)
    resume: bool = False
    overwrite: bool = False          # replace a run already in `out` (else refused, unless resume)
    amp: str = "auto"                # auto: bfloat16 where the CPU/GPU has native support
    compile: str = "auto"            # auto: torch.compile unless --subset (costs ~30 s)
    widths: tuple[int, ...] = TrunkConfig.widths
    depths: tuple[int, ...] = TrunkConfig.depths
    progress: bool = True

    def __post_init__(self):
        self.model = ALIASES.get(self.model, self.model)
        binary = self.model != "fp32"
        self.optimizer = self.optimizer or ("adam" if binary else "sgd")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam, got {self.optimizer!r}")
        if self.lr is None:
            self.lr = 2e-3 if self.optimizer == "adam" else 0.1
        if self.kd and not self.teacher_path:
            raise ValueError("--kd needs --teacher-path (a checkpoint of the fp32 teacher)")
        if self.teacher_path and not self.kd:
            raise ValueError("--teacher-path is used only with --kd; add --kd to distil from it")
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise ValueError("--kd-alpha must be in [0, 1] and --kd-temperature > 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be >= 1")
        # Checked here, not by torch at the first step after minutes of data loading.
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.warmup_epochs >= 0:
            raise ValueError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        # 32: the side of every image the loaders return (data.py; the data are loaded later).
        if not 0 <= self.cutout < 32:
            raise ValueError(f"--cutout must be >= 0 (0: off) and smaller than the 32-pixel image "
                             f"side, got {self.cutout}")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume contradict each other: --resume continues "
                             "the run in --out, --overwrite replaces it")
        if self.real_weights and not binary:
            raise ValueError("--real-weights is for xnor and bireal (fp32 weights are real already)")


# ---------------------------------------------------------------- losses and schedule

def kd_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float,
            label_smoothing: float = 0.0):
    """a*CE(student, labels) + (1-a)*T^2*KL(softmax(teacher/T) || softmax(student/T)).

    T^2 keeps the soft-target gradient on the same scale as CE's as T changes (Hinton et al.).
    """
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1),
                  F.log_softmax(teacher_logits.float() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return alpha * ce + (1.0 - alpha) * t * t * kl


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from peak to 0 at step ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- setup helpers

def init_from_checkpoint(model, path) -> str:
    """Load the weights of checkpoint ``path`` into ``model`` (stage 2 of two-stage training:
    a binary model starting from the stage-1 model with real-valued weights). The two must be
    the same network apart from ``binary_weights``. -> a line saying what was done."""
    model_sd, meta, _ = read_checkpoint(path)
    src = TrunkConfig(**meta["model_config"])
    mine = model.config
    differ = [k for k in ("kind", "widths", "depths", "num_classes") if getattr(src, k) != getattr(mine, k)]
    if differ:
        raise ValueError(f"--init-from {path}: its model differs in {', '.join(differ)} "
                         f"({src.to_dict()} vs {mine.to_dict()})")
    model.load_state_dict(model_sd)
    if src.binary_weights or not mine.binary_weights:
        return f"initialized from {path}"
    # Real-valued weights become latent binary ones: their learnable scales were never used in
    # stage 1, so restart them as XNOR-Net's alpha, mean |W| per output channel.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QuantConv2d) and m.is_binary and m.alpha is not None:
                m.alpha.copy_(m.weight.abs().mean(dim=(1, 2, 3)))
    return f"initialized from {path} (real-valued weights, now binarized; scales reset to mean |W|)"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_for(device: torch.device, amp: str):
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"--amp must be auto, bf16 or off, got {amp!r}")
    if amp == "auto":
        ok = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
        amp = "bf16" if ok else "off"
    if amp == "off":
        return contextlib.nullcontext, "off"
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), "bf16"


def make_optimizer(model, cfg: TrainConfig):
    if cfg.optimizer == "sgd":  # weight decay on every parameter (the fp32 teacher's recipe)
        wd = 5e-4 if cfg.weight_decay is None else cfg.weight_decay
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                               weight_decay=wd)
    # AdamW: no weight decay on latent binary weights, which it would only pull toward 0, where
    # their signs flip at random.
    binary = [m.weight for m in model.modules() if isinstance(m, QuantConv2d) and m.is_binary]
    binary_ids = {id(p) for p in binary}
    rest = [p for p in model.parameters() if id(p) not in binary_ids]
    wd = 1e-4 if cfg.weight_decay is None else cfg.weight_decay
    return torch.optim.AdamW([{"params": binary, "weight_decay": 0.0},
                              {"params": rest, "weight_decay": wd}], lr=cfg.lr)


def should_compile(cfg: TrainConfig, device: torch.device) -> bool:
    """--compile on/off as given; auto: on (CPU and CUDA) unless --subset (compiling costs ~30 s).

    CUDA once trained compiled binary models without gradients below the first binary conv
    (torch 2.11, a custom autograd.Function); the quantizers are now plain tensor arithmetic and
    tests/test_cuda.py (compiled CUDA gradients vs the CPU's) passed on an H100 on 2026-11-27.
    """
    if cfg.compile not in ("auto", "on", "off"):
        raise ValueError(f"--compile must be auto, on or off, got {cfg.compile!r}")
    if cfg.compile != "auto":
        return cfg.compile == "on"
    return cfg.subset is None


def setup_distributed() -> tuple[int, int, torch.device]:
    """-> (rank, world size, device). Uses torchrun's environment when present."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


@torch.no_grad()
def evaluate(model, split: xdata.Split, device, mean, std, batch_size=500, autocast=None):
    """-> (top-1 accuracy as a fraction, mean CE loss) of ``model`` on ``split``."""
    preds, loss = predict(model, split, device, mean, std, batch_size, autocast)
    return accuracy(split.labels, preds), loss


@torch.no_grad()
def predict(model, split: xdata.Split, device, mean, std, batch_size=500, autocast=None):
    """-> (predicted labels as a numpy array, mean CE loss) of ``model`` on ``split``."""
    model.eval()
    autocast = autocast or contextlib.nullcontext
    images = torch.from_numpy(split.images)
    labels = torch.from_numpy(split.labels)
    preds, loss_sum = [], 0.0
    for i in range(0, len(labels), batch_size):
        x = normalize(images[i:i + batch_size].to(device), mean, std)
        y = labels[i:i + batch_size].to(device)
        with autocast():
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        preds.append(logits.argmax(1).cpu())
    preds = torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)
    return preds, loss_sum / max(1, len(labels))


# ---------------------------------------------------------------- outputs

def write_metrics(out: Path, history: list[dict]) -> None:
    with open(out / "metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    from .plots import plot_curves
    plot_curves(history, out / "curves.png")


# ---------------------------------------------------------------- the loop

def _check_before_data(cfg: TrainConfig) -> Path | None:
    """Mistakes in the model shape or the input checkpoints fail at once, not after a first run
    has decoded 60,000 images. -> the file --resume continues from, if any."""
    TrunkConfig(kind=cfg.model, widths=cfg.widths, depths=cfg.depths,
                binary_weights=not cfg.real_weights)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    resume_from = resume_source(cfg)  # --init-from unused when there is one
    if resume_from is not None:
        check_resumable(resume_from, read_metadata(resume_from), cfg,
                        int(os.environ.get("WORLD_SIZE", "1")))
    for path in (cfg.teacher_path, None if resume_from else cfg.init_from):
        if path:
            check_checkpoint_path(Path(path))
    # A mistyped --out must not wipe another run (hours of training): replacing one is asked for.
    if not cfg.resume and not cfg.overwrite:
        held = [name for name in ("checkpoint.safetensors", "model.safetensors")
                if (out / name).exists()]
        if held:
            raise ValueError(f"--out {out} already holds a run ({', '.join(held)}); add --resume "
                             "to continue it, --overwrite to replace it, or give another --out")
    if cfg.teacher_path:
        _warn_if_not_fp32_teacher(cfg.teacher_path)
    return resume_from


def _warn_if_not_fp32_teacher(path) -> None:
    """KD is meant to distil from the fp32 teacher; another model (a binary student's checkpoint,
    by a slip of the path) still works as one, so it is said, not refused (once, by rank 0)."""
    kind = read_metadata(path).get("model_config", {}).get("kind")
    if kind != "fp32" and (not dist.is_initialized() or dist.get_rank() == 0):
        print(f"warning: --teacher-path {path} holds a model of kind {kind or '(not given)'}, "
              "not the fp32 teacher: distilling from it anyway", file=sys.stderr)


def resume_source(cfg: TrainConfig) -> Path | None:
    """What --resume continues from: <out>/checkpoint.safetensors (weights and optimizer state),
    else <out>/model.safetensors (weights, epoch and history; written after every epoch too, and
    small enough to survive where the checkpoint was not kept), else nothing (a fresh start)."""
    if not cfg.resume:
        return None
    for name in ("checkpoint.safetensors", "model.safetensors"):
        if (Path(cfg.out) / name).is_file():
            return Path(cfg.out) / name
    return None


_RESUME_KEYS = ("model_config", "train_config", "world_size", "history", "epoch")


def check_resumable(path: Path, meta: dict, cfg: TrainConfig, world: int) -> None:
    """Refuse a file --resume cannot continue: not from `xnornet train`, or other settings that the
    LR schedule and the data order depend on (resuming with others would jump)."""
    missing = [k for k in _RESUME_KEYS if k not in meta]
    if missing:
        raise ValueError(f"cannot resume {path}: its metadata has no {', '.join(missing)} (not written "
                         "by `xnornet train`); use another --out or drop --resume")
    want = TrunkConfig(kind=cfg.model, widths=cfg.widths, depths=cfg.depths,
                       binary_weights=not cfg.real_weights).to_dict()
    try:  # (through TrunkConfig: checkpoints from before a config field get its default)
        have = TrunkConfig(**meta["model_config"]).to_dict()
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot resume {path}: unreadable model config ({e})") from e
    if any(have[k] != want[k] for k in want if k != "num_classes"):  # (classes: from the data)
        raise ValueError(f"{path} holds a {have} model, not the requested {want}; use another "
                         "--out or drop --resume")
    saved = meta["train_config"]
    changed = [k for k in ("epochs", "batch_size", "seed", "lr", "optimizer")
               if saved.get(k) != getattr(cfg, k)] + (["world size"] if meta["world_size"] != world else [])
    if saved.get("cutout", 0) != cfg.cutout:  # (checkpoints from before --cutout: 0)
        changed.append("cutout")
    if changed:
        raise ValueError(f"cannot resume {path} with different {', '.join(changed)}; "
                         "use the original settings or another --out")


def train(cfg: TrainConfig) -> dict:
    """Runs the training; -> the last epoch's metrics. Under torchrun it joins the process group
    (or uses the caller's, if one is already set up) and leaves a group it created torn down."""
    owns_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    # A gloo group still alive at interpreter exit can abort the process ("terminate called
    # without an active exception", seen in CI) after the run has finished and saved.
    try:
        result = _train(cfg)
    except BaseException:
        if owns_group and dist.is_initialized():
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                dist.destroy_process_group()
        raise
    if owns_group and dist.is_initialized():
        dist.destroy_process_group()
    return result


def _train(cfg: TrainConfig) -> dict:
    rank, world, device = setup_distributed()
    main = rank == 0
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.safetensors"
    torch.manual_seed(cfg.seed)

    resume_from = _check_before_data(cfg)
    if world > 1 and not main:
        dist.barrier()  # rank 0 downloads/decodes first; the others then read its files
    ds = xdata.load_cifar10(cfg.data_dir, progress=cfg.progress and main)
    if world > 1 and main:
        dist.barrier()
    train_split, test_split = ds.train.head(cfg.subset), ds.test.head(cfg.subset)
    mean, std = xdata.CIFAR10_MEAN, xdata.CIFAR10_STD
    train_x = torch.from_numpy(train_split.images).to(device)
    train_y = torch.from_numpy(train_split.labels).to(device)

    model = build_model(cfg.model, widths=cfg.widths, depths=cfg.depths, num_classes=len(ds.classes),
                        binary_weights=not cfg.real_weights).to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    history: list[dict] = []
    start_epoch = 0
    if resume_from is not None:
        model_sd, meta, optim_sd = read_checkpoint(resume_from)  # checked by _check_before_data
        classes = TrunkConfig(**meta["model_config"]).num_classes  # (the rest: check_resumable)
        if classes != model.config.num_classes:
            raise ValueError(f"{resume_from} holds a model of {classes} classes, the data has "
                             f"{model.config.num_classes}; use another --out or drop --resume")
        model.load_state_dict(model_sd)
        if optim_sd is not None:
            optimizer.load_state_dict(optim_sd)
        history, start_epoch = meta["history"], meta["epoch"]
        if main:
            print(f"resuming {resume_from} after epoch {start_epoch}")
            if optim_sd is None:
                lr_now = meta["history"][-1]["lr"] if meta["history"] else cfg.lr
                print(f"warning: no {ckpt_path.name} in {out}: the optimizer state starts afresh (the "
                      f"weights, epoch and schedule continue, at {lr_now:.3g} = {lr_now / cfg.lr:.1%} "
                      "of the peak learning rate), so the result differs from an uninterrupted run: "
                      "little late in the schedule, more early on", file=sys.stderr)
    elif cfg.init_from:
        note = init_from_checkpoint(model, cfg.init_from)
        if main:
            print(note)

    teacher = None
    if cfg.kd:
        teacher, _ = load_model(cfg.teacher_path, device)
        teacher = teacher.to(memory_format=torch.channels_last)

    autocast, amp = autocast_for(device, cfg.amp)
    use_compile = should_compile(cfg, device)
    net = torch.compile(model) if use_compile else model
    if teacher is not None and use_compile:
        teacher = torch.compile(teacher)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)

    n = len(train_y)
    steps_per_epoch = math.ceil(math.ceil(n / world) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    meta_base = {"model_config": model.config.to_dict(), "train_config": asdict(cfg),
                 "classes": list(ds.classes), "mean": list(mean), "std": list(std),
                 "data_source": ds.source, "amp": amp, "world_size": world}
    if main:
        print(f"training {cfg.model} on {n} images ({ds.source}), device {device}, amp {amp}, "
              f"compile {use_compile}, world {world}, {steps_per_epoch} steps/epoch")

    from tqdm import tqdm
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        # Equal shards (as DistributedSampler): pad with the permutation's first images, so every
        # rank runs the same number of non-empty steps.
        perm = torch.cat([perm, perm[:(-n) % world]])[rank::world]
        loss_sum = correct = seen = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and main), leave=False, mininterval=2.0)
        for i in bar:
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(device)
            x = cutout(normalize(random_crop_flip(train_x[idx], 4, g), mean, std), cfg.cutout, g)
            y = train_y[idx]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + i, total_steps, warmup, cfg.lr)
            with autocast():
                logits = net(x)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(x)
                    loss = kd_loss(logits, t_logits, y, cfg.kd_alpha, cfg.kd_temperature,
                                   cfg.label_smoothing)
                else:
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clip_latent_weights(model)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        train_seconds = time.perf_counter() - t0
        test_acc, test_loss = evaluate(net, test_split, device, mean, std, autocast=autocast)
        seen = max(seen, 1)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "test_loss": test_loss, "test_acc": test_acc, "lr": optimizer.param_groups[0]["lr"],
               "epoch_seconds": round(train_seconds, 2)}
        history.append(row)
        if main:
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} "
                  f"acc {row['train_acc']:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | "
                  f"{train_seconds:.0f}s", flush=True)
            meta = {**meta_base, "epoch": epoch + 1, "history": history, "test_acc": test_acc}
            save_checkpoint(ckpt_path, model, meta, optimizer)
            save_checkpoint(out / "model.safetensors", model, meta)
            write_metrics(out, history)
    if world > 1:
        dist.barrier()
    return history[-1] if history else {}
