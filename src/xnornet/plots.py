"""Plots: training curves (loss and accuracy per epoch), runs side by side, a confusion matrix."""
from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: Path, title: str | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in history], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_runs(runs: dict[str, list[dict]], path: Path, title: str | None = None) -> None:
    """Test accuracy per epoch of several runs on one chart (name -> metrics history)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, history in runs.items():
        ax.plot([r["epoch"] for r in history], [100 * r["test_acc"] for r in history], ".-",
                label=f"{name} ({100 * history[-1]['test_acc']:.2f}%)")
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=title or "test accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion, classes, path: Path, title: str | None = None) -> None:
    """Confusion matrix as row-normalized percentages (row = true class), counts in the cells."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion)
    rows = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    share = 100.0 * counts / rows
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.6 + 0.65 * n))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    for t in range(n):
        for p in range(n):
            if counts[t, p]:
                ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if share[t, p] > 60 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true class",
           title=title or f"confusion matrix, top-1 {100 * np.trace(counts) / max(1, counts.sum()):.2f}%")
    fig.colorbar(im, ax=ax, label="% of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_history(source: Path) -> list[dict]:
    """A run's per-epoch metrics: a `xnornet train --out` folder (its metrics.jsonl, else
    metrics.csv) or a metrics CSV file itself (as kept in docs/results/). Each row has at least
    epoch and test_acc; anything else is a ValueError naming the file (and the row)."""
    import csv
    import json

    if source.is_dir():
        jsonl, table = source / "metrics.jsonl", source / "metrics.csv"
        if not jsonl.is_file() and not table.is_file():
            raise ValueError(f"{source} holds neither metrics.jsonl nor metrics.csv "
                             "(RUN is a `xnornet train --out` folder or a metrics CSV file)")
        source = jsonl if jsonl.is_file() else table
    elif not source.is_file():
        raise ValueError(f"{source} does not exist (RUN is a `xnornet train --out` folder or a metrics CSV file)")
    try:
        if source.suffix == ".jsonl":
            rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        else:
            with source.open(newline="") as f:
                rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise ValueError(f"{source}: cannot read it ({e})") from e
    if not rows:
        raise ValueError(f"{source}: no epochs in it")
    history = []
    for n, row in enumerate(rows, 1):
        try:
            history.append({**row, "epoch": int(row["epoch"]), "test_acc": float(row["test_acc"])})
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: row {n} has no numeric epoch and test_acc ({e!r})") from e
    return history


def main(argv=None) -> int:
    """python -m xnornet.plots --out PNG NAME=RUN ...: one chart of test accuracy per epoch, RUN
    a `xnornet train --out` folder or a metrics CSV file (docs/results/*.csv)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m xnornet.plots", description=main.__doc__)
    ap.add_argument("runs", nargs="+", help="NAME=RUN (a run folder, or a metrics CSV file)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title")
    a = ap.parse_args(argv)
    runs = {}
    for spec in a.runs:
        name, sep, source = spec.partition("=")
        if not sep:
            ap.error(f"expected NAME=RUN, got {spec!r}")
        try:
            runs[name] = read_history(Path(source))
        except ValueError as e:
            ap.error(f"{name}: {e}")
    if not Path(a.out).parent.is_dir():
        ap.error(f"--out {a.out}: folder {Path(a.out).parent} does not exist")
    plot_runs(runs, Path(a.out), a.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
