"""Classification metrics from labels and predictions (numpy only): the confusion matrix and
per-class accuracy that `xnornet eval` reports beside top-1."""
from __future__ import annotations

import numpy as np


def accuracy(labels, preds) -> float:
    """Top-1 accuracy as a fraction; 0.0 for no images."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return float((labels == preds).sum()) / max(1, len(labels))


def confusion_matrix(labels, preds, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: row = true class, column = predicted class."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} must be equal 1-D shapes")
    for name, v in (("label", labels), ("prediction", preds)):
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"a {name} lies outside 0..{n_classes - 1}: {v.min()}..{v.max()}")
    flat = labels.astype(np.int64) * n_classes + preds.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class (diagonal / row sum); NaN for a class with no test images."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def per_class_report(confusion: np.ndarray, classes) -> dict:
    """JSON-ready: {class: accuracy or None}, the matrix as lists, and the most frequent mistake."""
    acc = per_class_accuracy(confusion)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    report = {"per_class_accuracy": {c: (None if np.isnan(a) else float(a))
                                     for c, a in zip(classes, acc)},
              "confusion": confusion.tolist()}
    if off.any():
        t, p = np.unravel_index(off.argmax(), off.shape)
        report["top_confusion"] = {"true": classes[t], "predicted": classes[p],
                                   "count": int(off[t, p])}
    return report


def format_per_class(report: dict) -> str:
    """One line: 'per class: airplane 86.1, automobile 93.4, ...' (a class without images: -)."""
    parts = [f"{c} {'-' if a is None else f'{100 * a:.1f}'}"
             for c, a in report["per_class_accuracy"].items()]
    line = "per class (%): " + ", ".join(parts)
    if "top_confusion" in report:
        t = report["top_confusion"]
        line += f"; most frequent mistake: {t['true']} taken for {t['predicted']} ({t['count']}x)"
    return line
