"""Tiny, easily separable CIFAR-like data written in the official python-pickle layout."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def separable_images(n: int, num_classes: int = 10, seed: int = 0):
    """(n, 32, 32, 3) uint8 images and labels: per class a fixed colour and a coarse 4x4 pattern
    (blown up to 32x32), plus pixel noise. Learnable in a few epochs by a tiny conv net."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(1234)
    colours = fixed.integers(40, 216, (num_classes, 1, 1, 3))
    coarse = fixed.integers(-40, 41, (num_classes, 4, 4, 1)).repeat(8, axis=1).repeat(8, axis=2)
    templates = colours + coarse
    labels = np.arange(n) % num_classes
    noise = rng.normal(0, 25, (n, 32, 32, 3))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_python_batches(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write cifar-10-batches-py/{data_batch_1, test_batch} under root; returns root."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("data_batch_1", n_train, seed), ("test_batch", n_test, seed + 1)):
        images, labels = separable_images(n, seed=s)
        rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # CHW rows, as CIFAR stores them
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels.tolist(),
                         b"data": rows, b"filenames": [b"x.png"] * n}, f, protocol=2)
    return Path(root)
