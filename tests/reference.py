"""Slow, obviously correct numpy versions of every op of the model file (docs/model-format.md).
float64 everywhere, except where the spec fixes float32 (the binarization threshold)."""
import numpy as np
from pytest import approx

from xnornet import modelfile as mf


def conv(x, w_ohwi, stride, pad):
    """x (N, C, H, W), w (O, k, k, C) -> (N, O, Ho, Wo), zero padding."""
    n, c, h, w = x.shape
    o, k = w_ohwi.shape[:2]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, :, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
            out += np.einsum("nchw,oc->nohw", patch, w_ohwi[:, ky, kx, :].astype(np.float64))
    return out


def shortcut(x, residual, stride, cout):
    if residual == mf.RES_IDENTITY:
        return x.astype(np.float64)
    if residual == mf.RES_DOWNSAMPLE:
        n, c, h, w = x.shape
        pooled = x.astype(np.float64).reshape(n, c, h // stride, stride, w // stride, stride).mean((3, 5))
        return np.tile(pooled, (1, cout // c, 1, 1))
    return 0.0


def run_op(op: mf.Op, x):
    """x float (N, C, H, W) -> the op's output, float64."""
    if op.kind == mf.HEAD:
        s, b, w, fb, _ = op.tensors
        z = np.maximum(x * s[None, :, None, None] + b[None, :, None, None], 0).mean((2, 3))
        return z @ w.T.astype(np.float64) + fb
    cin, cout, k, stride, pad, relu, residual = op.params[:7]
    if op.kind == mf.CONV_FP:
        w, scale, bias = op.tensors
        y = conv(x, w, stride, pad)
    else:
        in_s, in_b, bits, scale, bias = op.tensors
        x32 = x.astype(np.float32)
        b = np.where(x32 * in_s[None, :, None, None] + in_b[None, :, None, None] >= 0, 1.0, -1.0)
        signs = np.where(mf.unpack_bits(bits, cin), 1.0, -1.0)
        y = conv(b, signs, stride, pad)
    y = y * scale[None, :, None, None] + bias[None, :, None, None] + shortcut(x, residual, stride, cout)
    return np.maximum(y, 0) if relu else y


def run_ops(ops, x):
    for op in ops:
        if op.kind != mf.INPUT:
            x = run_op(op, x)
    return x


def check_eval_per_class(result, classes):
    """The per-class numbers of `xnornet eval --json` agree with its top-1 and with each other."""
    m = np.array(result["confusion"])
    assert m.shape == (len(classes), len(classes)) and m.sum() == result["n"]
    assert np.trace(m) / m.sum() == approx(result["accuracy"])
    assert list(result["per_class_accuracy"]) == list(classes)
    for i, acc in enumerate(result["per_class_accuracy"].values()):
        assert acc == (None if m[i].sum() == 0 else approx(m[i, i] / m[i].sum()))
