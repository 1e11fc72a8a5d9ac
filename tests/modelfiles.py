"""Small model files for the engine tests, built with xnornet.modelfile (numpy only).

`small_ops()` is the reference network of the robustness tests:

    INPUT 8x8x3 -> CONV_FP 3->64 k3 p1 -> BCONV 64->64 k3 p1 identity
                -> BCONV 64->128 k3 s2 p1 downsample -> HEAD 128->10

`patch()` edits a file at byte offsets, and `fix_crc()` recomputes the checksum so that a
structurally bad file gets past the CRC check and into the parser's structural validation.
`random_chain(rng)` builds a random, mostly valid chain of ops for fuzzing the runtime.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from xnornet.modelfile import (BCONV, CONV_FP, HEAD, HEADER_BYTES, INPUT, OP_BYTES, RES_DOWNSAMPLE,
                               RES_IDENTITY, RES_NONE, TENSOR_BYTES, Op, pack_bits, to_bytes)

CRC_AT, N_OPS_AT, N_TENSORS_AT = 24, 28, 32
MEAN = np.array([0.49, 0.48, 0.45], np.float32)
STD = np.array([0.25, 0.24, 0.26], np.float32)


def input_op(h=8, w=8, c=3, mean=None, std=None) -> Op:
    if mean is None:
        mean = MEAN if c == 3 else np.full(c, 0.5, np.float32)
    if std is None:
        std = STD if c == 3 else np.full(c, 0.25, np.float32)
    return Op(INPUT, [h, w, c], [np.asarray(mean, np.float32), np.asarray(std, np.float32)])


def conv_fp(rng, cin, cout, k=3, stride=1, pad=1, relu=1, residual=RES_NONE) -> Op:
    w = (rng.standard_normal((cout, k, k, cin)) / np.sqrt(k * k * cin)).astype(np.float32)
    return Op(CONV_FP, [cin, cout, k, stride, pad, relu, residual],
              [w, rng.uniform(0.5, 1.5, cout).astype(np.float32),
               rng.normal(0, 0.1, cout).astype(np.float32)])


def bconv(rng, cin, cout, k=3, stride=1, pad=1, relu=0, residual=RES_NONE) -> Op:
    weight = pack_bits(rng.random((cout, k, k, cin)) < 0.5)
    return Op(BCONV, [cin, cout, k, stride, pad, relu, residual],
              [rng.uniform(0.5, 1.5, cin).astype(np.float32),
               rng.normal(0, 0.2, cin).astype(np.float32), weight,
               (rng.uniform(0.5, 1.5, cout) / (k * k * cin)).astype(np.float32),
               rng.normal(0, 0.1, cout).astype(np.float32)])


def head(rng, cin, classes=10, names=None) -> Op:
    names = [f"class{i}" for i in range(classes)] if names is None else names
    return Op(HEAD, [cin, classes],
              [rng.uniform(0.5, 1.5, cin).astype(np.float32), rng.normal(0, 0.1, cin).astype(np.float32),
               (rng.standard_normal((classes, cin)) / np.sqrt(cin)).astype(np.float32),
               rng.normal(0, 0.1, classes).astype(np.float32),
               np.frombuffer("\n".join(names).encode(), np.uint8).copy()])


def small_ops(seed=0) -> list[Op]:
    rng = np.random.default_rng(seed)
    return [input_op(8, 8, 3),
            conv_fp(rng, 3, 64),
            bconv(rng, 64, 64, residual=RES_IDENTITY),
            bconv(rng, 64, 128, stride=2, residual=RES_DOWNSAMPLE),
            head(rng, 128, 10)]


def small_model(seed=0) -> bytes:
    return to_bytes(small_ops(seed))


def fix_crc(data) -> bytes:
    data = bytearray(data)
    struct.pack_into("<I", data, CRC_AT, zlib.crc32(bytes(data[HEADER_BYTES:])))
    return bytes(data)


def patch(data, offset: int, fmt: str, *values, crc: bool = True) -> bytes:
    """struct.pack_into(fmt, data, offset, *values), then (by default) fix the checksum."""
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, *values)
    return fix_crc(data) if crc else bytes(data)


def op_at(i: int) -> int:
    """Byte offset of op entry i."""
    return HEADER_BYTES + OP_BYTES * i


def param_at(i: int, j: int) -> int:
    """Byte offset of params[j] of op i (i32)."""
    return op_at(i) + 8 + 4 * j


def tensor_at(data, t: int) -> int:
    """Byte offset of tensor entry t: dtype u32, ndim u32, dims u32[4], offset u64."""
    n_ops = struct.unpack_from("<I", data, N_OPS_AT)[0]
    return HEADER_BYTES + OP_BYTES * n_ops + TENSOR_BYTES * t


def first_tensor(ops: list[Op], i: int) -> int:
    return sum(len(op.tensors) for op in ops[:i])


def random_chain(rng) -> list[Op]:
    """A random chain of ops, mostly valid: optional INPUT, 0-4 convs (float or binary; any k,
    stride, pad; channels around multiples of 64; shortcuts mostly well-formed), optional HEAD.
    Never an INPUT op alone."""
    c = int(rng.integers(1, 9))
    ops = [input_op(8, 8, c)] if rng.random() < 0.6 else []
    for _ in range(int(rng.integers(0, 5))):
        cout = int(rng.choice([1, 3, 8, 16, 63, 64, 65, 100, 128, 130]))
        k = int(rng.choice([1, 2, 3, 5, 7]))
        stride, pad = int(rng.integers(1, 5)), int(rng.integers(0, k))
        residual = int(rng.choice([RES_NONE, RES_NONE, RES_IDENTITY, RES_DOWNSAMPLE]))
        if residual == RES_IDENTITY:
            cout, stride = c, (1 if rng.random() < 0.9 else stride)
        if residual == RES_DOWNSAMPLE and rng.random() < 0.9:
            cout = c * int(rng.integers(1, 4))
        if residual != RES_NONE and rng.random() < 0.9:
            k += 1 - k % 2
            pad = (k - 1) // 2
        conv = bconv if rng.random() < 0.6 else conv_fp
        ops.append(conv(rng, c, cout, k=k, stride=stride, pad=pad, relu=int(rng.integers(0, 2)),
                        residual=residual))
        c = cout
    if rng.random() < 0.7 or not ops or (len(ops) == 1 and ops[0].kind == INPUT):
        ops.append(head(rng, c, int(rng.integers(1, 12))))
    return ops
