"""A PyTorch eval model rebuilt from a packed model file: the reference the native engine must
agree with, and what the PyTorch/ONNX BNN rows of the benchmarks run. Binary convs run as float
convs on +-1 tensors with the file's folded affines, op for op as docs/model-format.md defines.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import modelfile as mf


def _vec(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32)).view(1, -1, 1, 1)


def _shortcut(x, residual, stride, cin, cout):
    if residual == mf.RES_IDENTITY:
        return x
    if residual == mf.RES_DOWNSAMPLE:
        x = F.avg_pool2d(x, stride) if stride > 1 else x
        return x.repeat(1, cout // cin, 1, 1)
    return None


class ConvOp(nn.Module):
    """CONV_FP and BCONV: y = conv(input') * scale + bias (+ shortcut), ReLU if asked."""

    def __init__(self, op: mf.Op, binary_as_float: bool = False):
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.pad, relu, self.residual = op.params[:7]
        self.relu = bool(relu)
        self.binary = op.kind == mf.BCONV and not binary_as_float
        if op.kind == mf.BCONV:
            in_s, in_b, bits, out_s, out_b = op.tensors
            signs = mf.unpack_bits(bits, self.cin)  # (cout, k, k, cin) bool
            weight = np.where(signs, 1.0, -1.0).astype(np.float32)
            self.register_buffer("in_scale", _vec(in_s))
            self.register_buffer("in_bias", _vec(in_b))
        else:
            weight, out_s, out_b = op.tensors
        self.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(
            np.asarray(weight, np.float32).transpose(0, 3, 1, 2))))
        self.register_buffer("scale", _vec(out_s))
        self.register_buffer("bias", _vec(out_b))

    def forward(self, x):
        inp = x
        if self.binary:
            inp = torch.where(x * self.in_scale + self.in_bias >= 0, 1.0, -1.0)
        y = F.conv2d(inp, self.weight, None, self.stride, self.pad) * self.scale + self.bias
        sc = _shortcut(x, self.residual, self.stride, self.cin, self.cout)
        if sc is not None:
            y = y + sc
        return torch.relu(y) if self.relu else y


class HeadOp(nn.Module):
    def __init__(self, op: mf.Op):
        super().__init__()
        s, b, w, fb, _ = op.tensors
        self.register_buffer("scale", _vec(s))
        self.register_buffer("bias", _vec(b))
        self.fc = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(np.array(w, np.float32)))
            self.fc.bias.copy_(torch.from_numpy(np.array(fb, np.float32)))

    def forward(self, x):
        return self.fc(torch.relu(x * self.scale + self.bias).mean(dim=(2, 3)))


class FileModel(nn.Module):
    """forward(x): x float (N, C, H, W) already normalized -> logits (or the last feature map).

    binary_as_float=True runs every binary conv as a float conv on real inputs: the FP32 network
    of the same shape, for timing comparisons.
    """

    def __init__(self, ops: list[mf.Op], binary_as_float: bool = False):
        super().__init__()
        self.mean = self.std = None
        layers = []
        for op in ops:
            if op.kind == mf.INPUT:
                self.mean, self.std = (np.array(t, np.float32) for t in op.tensors)
            elif op.kind in (mf.CONV_FP, mf.BCONV):
                layers.append(ConvOp(op, binary_as_float))
            elif op.kind == mf.HEAD:
                layers.append(HeadOp(op))
            else:
                raise mf.ModelFileError(f"unknown op kind {op.kind}")
        self.layers = nn.Sequential(*layers)
        self.class_names = mf.class_names(ops)
        self.eval()

    @classmethod
    def load(cls, path, binary_as_float: bool = False) -> "FileModel":
        return cls(mf.read_model(path), binary_as_float)

    def forward(self, x):
        return self.layers(x)

    def normalize(self, images_u8: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, C) -> normalized float (N, C, H, W), as the engine does it."""
        x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 255.0
        return (x - _vec(self.mean)) / _vec(self.std)
