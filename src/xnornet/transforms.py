"""Batched tensor transforms for training: random crop with zero padding, horizontal flip, cutout,
normalize.

All work on whole batches (no per-image Python): random_crop_flip and normalize take (N, H, W, C)
uint8, as data.py stores it; cutout takes the normalized (N, C, H, W) float batch.
"""
from __future__ import annotations

import torch


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by ``pad`` zero pixels, take a random HxW window per image, flip half the images.

    One gather does both: per image a row index grid (offset + 0..H-1) and a column grid that runs
    backwards for flipped images. Random numbers come from ``generator`` (on the CPU) so that a
    resumed run draws exactly what an uninterrupted one would.
    """
    n, h, w, _ = x.shape
    padded = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    cols = torch.arange(w).expand(n, w)
    cols = ox + torch.where(flip, w - 1 - cols, cols)
    rows = oy + torch.arange(h)
    idx = torch.arange(n)[:, None, None]
    dev = x.device
    return padded[idx.to(dev), rows[:, :, None].to(dev), cols[:, None, :].to(dev)]


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in channels-last memory, (x/255 - mean)/std."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.permute(0, 3, 1, 2).float().div_(255.0) - mean).div_(std)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one random ``size`` x ``size`` square per image of a normalized (N, C, H, W) batch.

    Cutout (DeVries & Taylor, 2017): the square's centre is uniform over the image and the square
    is clipped at the borders, so near an edge less is cut. Applied after normalization, zero is
    the dataset's mean colour. One mask for the whole batch from broadcast comparisons; random
    numbers from ``generator``, as in random_crop_flip.
    """
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x * (~inside).to(x.device, x.dtype)[:, None]
