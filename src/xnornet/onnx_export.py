"""Packed model file -> ONNX with standard ops only (no custom binary op), numpy + onnx, no torch.

Input `images`: float32 (N, C, H, W), already normalized; output `logits`. Binary convs become
Mul/Add (input affine) -> GreaterOrEqual -> Where(+1, -1) -> Conv with +-1 float weights -> Mul/Add,
i.e. the BNN simulated in float, as a runtime without binary kernels has to run it.

The +-1 weights are stored as packed sign bits (uint8) and expanded by a small constant subgraph
(BitShift, Mod, Cast, Mul, Sub, Slice, Reshape) that runtimes fold at load time: the file stays
about as small as the packed model file instead of holding 32-bit floats per weight.
"""
from __future__ import annotations

import numpy as np

from . import modelfile as mf


class _Graph:
    def __init__(self):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, array, name=None) -> str:
        name = name or f"c{len(self.inits)}"
        self.inits.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, **attrs) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        return out

    def sign_weights(self, signs: np.ndarray) -> str:
        """+-1 float32 weights of signs' shape (bool: True = +1), stored 1 bit each."""
        n = signs.size
        packed = self.const(np.packbits(signs.reshape(-1)).reshape(-1, 1))  # (ceil(n/8), 1) uint8
        shifts = self.const(np.arange(7, -1, -1, dtype=np.uint8).reshape(1, 8))  # big-endian bits
        bits = self.node("Mod", [self.node("BitShift", [packed, shifts], direction="RIGHT"),
                                 self.const(np.array(2, np.uint8))])
        ones = self.node("Cast", [bits], to=1)  # 1 = FLOAT: 0.0 / 1.0
        pm = self.node("Sub", [self.node("Mul", [ones, self.const(np.array(2, np.float32))]),
                               self.const(np.array(1, np.float32))])
        flat = self.node("Slice", [self.node("Reshape", [pm, self.const(np.array([-1], np.int64))]),
                                   self.const(np.array([0], np.int64)), self.const(np.array([n], np.int64))])
        return self.node("Reshape", [flat, self.const(np.array(signs.shape, np.int64))])

    def channel_affine(self, x, scale, bias) -> str:
        s = self.const(np.asarray(scale, np.float32).reshape(1, -1, 1, 1))
        b = self.const(np.asarray(bias, np.float32).reshape(1, -1, 1, 1))
        return self.node("Add", [self.node("Mul", [x, s]), b])


def _conv(g: _Graph, x: str, op: mf.Op) -> str:
    cin, cout, k, stride, pad, relu, residual = op.params[:7]
    if op.kind == mf.BCONV:
        in_s, in_b, bits, scale, bias = op.tensors
        positive = g.node("GreaterOrEqual", [g.channel_affine(x, in_s, in_b),
                                             g.const(np.zeros((), np.float32))])
        inp = g.node("Where", [positive, g.const(np.ones((), np.float32)),
                               g.const(-np.ones((), np.float32))])
        w = g.sign_weights(np.ascontiguousarray(mf.unpack_bits(bits, cin).transpose(0, 3, 1, 2)))
    else:
        weight, scale, bias = op.tensors
        inp = x
        w = g.const(np.ascontiguousarray(np.asarray(weight, np.float32).transpose(0, 3, 1, 2)))
    y = g.node("Conv", [inp, w], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
    y = g.channel_affine(y, scale, bias)
    if residual == mf.RES_IDENTITY:
        y = g.node("Add", [y, x])
    elif residual == mf.RES_DOWNSAMPLE:
        pooled = g.node("AveragePool", [x], kernel_shape=[stride, stride], strides=[stride, stride])
        y = g.node("Add", [y, g.node("Concat", [pooled] * (cout // cin), axis=1)])
    return g.node("Relu", [y]) if relu else y


def to_onnx(ops: list[mf.Op], opset: int = 17):
    from onnx import TensorProto, checker, helper
    g = _Graph()
    first = next(op for op in ops if op.kind != mf.INPUT)
    x = "images"
    out_shape = None
    for op in ops:
        if op.kind in (mf.CONV_FP, mf.BCONV):
            x = _conv(g, x, op)
        elif op.kind == mf.HEAD:
            s, b, w, fb, _ = op.tensors
            z = g.node("Flatten", [g.node("GlobalAveragePool", [g.node("Relu", [g.channel_affine(x, s, b)])])])
            x = g.node("Gemm", [z, g.const(np.asarray(w, np.float32)), g.const(np.asarray(fb, np.float32))],
                       transB=1)
            out_shape = ["N", op.params[1]]
    g.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        g.nodes, "xnornet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", first.params[0], "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="xnornet")
    checker.check_model(model)
    return model


def export_onnx(model_file, out) -> int:
    """Write the ONNX version of a packed model file; returns its size in bytes."""
    import onnx
    model = to_onnx(mf.read_model(model_file))
    onnx.save(model, str(out))
    from pathlib import Path
    return Path(out).stat().st_size
