"""Packed model file -> OpenVINO model whose binary convs are opset1 BinaryConvolution
("xnor-popcount"), so OpenVINO's CPU plugin runs them with its own x86 binary kernel.

Facts this relies on (checked against our engine by tests/test_bench.py): u1 constants pack
8 weights per byte, first weight in the lowest bit, bit 1 = +1; pad_value 0.0 is exact zero
padding; the output equals a float conv on +-1 inputs.
Input `images`: float32 (N, C, H, W), normalized; output: logits.
"""
from __future__ import annotations

import numpy as np

from . import modelfile as mf


def _vec(a):
    return np.asarray(a, np.float32).reshape(1, -1, 1, 1)


def _conv(ops, x, op: mf.Op):
    cin, cout, k, stride, pad, relu, residual = op.params[:7]
    strides, pads, dil = [stride, stride], [pad, pad], [1, 1]
    if op.kind == mf.BCONV:
        in_s, in_b, bits, scale, bias = op.tensors
        t = ops.add(ops.multiply(x, _vec(in_s)), _vec(in_b))
        pm = ops.select(ops.greater_equal(t, np.float32(0)), np.float32(1), np.float32(-1))
        import openvino as ov
        signs = mf.unpack_bits(bits, cin).transpose(0, 3, 1, 2)  # (cout, cin, k, k) bool
        packed = np.packbits(signs.reshape(-1), bitorder="little")
        tensor = ov.Tensor(ov.Type.u1, ov.Shape([cout, cin, k, k]))
        tensor.data[:] = packed  # u1 tensors expose their packed bytes
        weight = ov.op.Constant(tensor, shared_memory=False)  # own a copy: tensor is a local
        y = ops.binary_convolution(pm, weight, strides, pads, pads, dil, "xnor-popcount", 0.0)
    else:
        w, scale, bias = op.tensors
        weight = np.ascontiguousarray(np.asarray(w, np.float32).transpose(0, 3, 1, 2))
        y = ops.convolution(x, weight, strides, pads, pads, dil)
    y = ops.add(ops.multiply(y, _vec(scale)), _vec(bias))
    if residual == mf.RES_IDENTITY:
        y = ops.add(y, x)
    elif residual == mf.RES_DOWNSAMPLE:
        pooled = ops.avg_pool(x, [stride, stride], [0, 0], [0, 0], [stride, stride], True)
        y = ops.add(y, ops.concat([pooled] * (cout // cin), 1))
    return ops.relu(y) if relu else y


def to_openvino(ops_list: list[mf.Op], batch: int | None = None):
    import openvino as ov
    import openvino.opset13 as ops
    first = next(op for op in ops_list if op.kind != mf.INPUT)
    shape = [batch if batch else -1, first.params[0], 32, 32]
    for op in ops_list:
        if op.kind == mf.INPUT:
            shape[2], shape[3] = op.params[0], op.params[1]
    images = ops.parameter(shape, np.float32, name="images")
    x = images
    for op in ops_list:
        if op.kind in (mf.CONV_FP, mf.BCONV):
            x = _conv(ops, x, op)
        elif op.kind == mf.HEAD:
            s, b, w, fb, _ = op.tensors
            z = ops.reduce_mean(ops.relu(ops.add(ops.multiply(x, _vec(s)), _vec(b))), [2, 3], False)
            x = ops.add(ops.matmul(z, np.asarray(w, np.float32), False, True), np.asarray(fb, np.float32))
    return ov.Model([x], [images], "xnornet")
