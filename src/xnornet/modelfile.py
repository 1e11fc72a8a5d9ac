"""The packed model file (.xnor): write and read it with numpy only. Format: docs/model-format.md.

A model file is a list of ops, each with a few integer parameters and some tensors:

    INPUT   params [H, W, C]                          tensors mean[C], std[C]
    CONV_FP params [cin, cout, k, stride, pad, relu, residual]
            tensors weight f32[cout,k,k,cin], scale[cout], bias[cout]
            y = conv(x) * scale + bias (+ shortcut(x)), then ReLU if relu
    BCONV   params [cin, cout, k, stride, pad, relu, residual]
            tensors in_scale[cin], in_bias[cin], weight u64[cout,k,k,P], out_scale[cout], out_bias[cout]
            b = +1 where x*in_scale + in_bias >= 0 else -1;  dot = conv(b, sign(W)) with zero padding
            y = dot * out_scale + out_bias (+ shortcut(x)), then ReLU if relu
    HEAD    params [cin, classes]
            tensors scale[cin], bias[cin], weight f32[classes,cin], bias f32[classes], names u8[]
            logits = weight @ mean_hw(relu(x*scale + bias)) + bias

shortcut: 0 none, 1 identity, 2 average-pool(stride) then channels repeated cout/cin times.
Packed bits: bit j of word p is channel 64p+j; 1 means +1; bits past cin are 0.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import XnornetError, require_file

MAGIC = b"XNORNET\x00"
VERSION = 1
HEADER_BYTES, OP_BYTES, TENSOR_BYTES, ALIGN = 64, 64, 32, 64
INPUT, CONV_FP, BCONV, HEAD = 1, 2, 3, 4
OP_NAMES = {INPUT: "input", CONV_FP: "conv_fp", BCONV: "bconv", HEAD: "head"}
_N_PARAMS = {INPUT: 3, CONV_FP: 7, BCONV: 7, HEAD: 2}
RES_NONE, RES_IDENTITY, RES_DOWNSAMPLE = 0, 1, 2
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<u8"), 3: np.dtype("u1")}
_DTYPE_CODES = {v: k for k, v in _DTYPES.items()}
_HEADER = struct.Struct("<8sIIQIII")  # magic, version, header bytes, file bytes, crc, ops, tensors
_OP = struct.Struct("<II10iII8x")    # kind, n_params, params[10], first tensor, tensor count
_TENSOR = struct.Struct("<II4IQ")    # dtype, ndim, dims[4], offset


class ModelFileError(XnornetError, ValueError):
    """A model file is missing, truncated, corrupt or of another version."""


@dataclass
class Op:
    kind: int
    params: list[int]
    tensors: list[np.ndarray] = field(default_factory=list)

    @property
    def name(self) -> str:
        return OP_NAMES.get(self.kind, f"op{self.kind}")


def pack_bits(positive: np.ndarray) -> np.ndarray:
    """(..., C) bool (True = +1) -> (..., ceil(C/64)) uint64, bit j of word p = channel 64p+j."""
    c = positive.shape[-1]
    words = (c + 63) // 64
    padded = np.zeros(positive.shape[:-1] + (words * 64,), np.uint8)
    padded[..., :c] = positive
    as_bytes = np.packbits(padded.reshape(-1, words * 64), axis=-1, bitorder="little")
    return as_bytes.view("<u8").reshape(positive.shape[:-1] + (words,))


def unpack_bits(words: np.ndarray, c: int) -> np.ndarray:
    """Inverse of pack_bits: (..., P) uint64 -> (..., c) bool."""
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    bits = np.unpackbits(as_bytes.reshape(-1, words.shape[-1] * 8), axis=-1, bitorder="little")
    return bits[:, :c].astype(bool).reshape(words.shape[:-1] + (c,))


def to_bytes(ops: list[Op]) -> bytes:
    tensors = [np.ascontiguousarray(t) for op in ops for t in op.tensors]
    data_at = HEADER_BYTES + OP_BYTES * len(ops) + TENSOR_BYTES * len(tensors)
    offset = -(-data_at // ALIGN) * ALIGN
    table, blobs, first = [], [], 0
    op_table = b""
    for op in ops:
        params = list(op.params) + [0] * (10 - len(op.params))
        op_table += _OP.pack(op.kind, len(op.params), *params, first, len(op.tensors))
        first += len(op.tensors)
    for t in tensors:
        dtype = t.dtype.newbyteorder("<") if t.dtype.byteorder == ">" else t.dtype
        if dtype not in _DTYPE_CODES or t.ndim > 4:
            raise ModelFileError(f"cannot store a {t.dtype} tensor of {t.ndim} dims")
        dims = list(t.shape) + [0] * (4 - t.ndim)
        table.append(_TENSOR.pack(_DTYPE_CODES[dtype], t.ndim, *dims, offset))
        blobs.append((offset, t.astype(dtype, copy=False).tobytes()))
        offset = -(-(offset + t.nbytes) // ALIGN) * ALIGN
    body = bytearray(offset - HEADER_BYTES)
    body[:len(op_table)] = op_table
    tt = b"".join(table)
    body[len(op_table):len(op_table) + len(tt)] = tt
    for at, blob in blobs:
        body[at - HEADER_BYTES:at - HEADER_BYTES + len(blob)] = blob
    header = _HEADER.pack(MAGIC, VERSION, HEADER_BYTES, offset, zlib.crc32(body), len(ops),
                          len(tensors))
    return header.ljust(HEADER_BYTES, b"\0") + bytes(body)


def write_model(path, ops: list[Op]) -> int:
    """Write ops to path atomically; returns the file size in bytes. The bytes are read back
    first, so a model the readers would refuse (NaN weights from a diverged run) is never written."""
    data = to_bytes(ops)
    from_bytes(data, str(path))
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write the model file: {path} is a folder")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        raise
    return len(data)


def from_bytes(data: bytes, source: str = "model") -> list[Op]:
    """Parse and check a model file (header, checksum, tables, bounds). Raises ModelFileError."""
    def fail(msg):
        raise ModelFileError(f"{source}: invalid model file: {msg}")
    if len(data) < HEADER_BYTES:
        fail(f"{len(data)} bytes, shorter than the header")
    magic, version, hbytes, size, crc, n_ops, n_tensors = _HEADER.unpack_from(data)
    if magic != MAGIC:
        fail("bad magic (not an xnornet model file)")
    if version != VERSION:
        fail(f"format version {version}, this xnornet reads version {VERSION}")
    if hbytes != HEADER_BYTES or size != len(data):
        fail(f"header says {size} bytes, file has {len(data)} (truncated or padded)")
    if zlib.crc32(data[HEADER_BYTES:]) != crc:
        fail("checksum mismatch (corrupt body)")
    tensors_at = HEADER_BYTES + OP_BYTES * n_ops
    if n_ops == 0 or tensors_at + TENSOR_BYTES * n_tensors > len(data):
        fail("op/tensor tables run past the end of the file")
    data_at = tensors_at + TENSOR_BYTES * n_tensors  # tensor data may not alias the tables
    tensors, spans = [], []
    for i in range(n_tensors):
        code, ndim, *dims, offset = _TENSOR.unpack_from(data, tensors_at + TENSOR_BYTES * i)
        if code not in _DTYPES or ndim > 4:
            fail(f"tensor {i}: unknown dtype or too many dims")
        shape = tuple(dims[:ndim])
        nbytes = math.prod(shape) * _DTYPES[code].itemsize  # Python ints: no wrap-around
        if offset < data_at or offset % ALIGN or offset + nbytes > len(data):
            fail(f"tensor {i}: data out of bounds or misaligned")
        tensors.append(np.frombuffer(data, _DTYPES[code], math.prod(shape), offset).reshape(shape))
        spans.append((offset, offset + nbytes, i))
    # The engine's rules too (csrc/core/model_file.cpp): tensor data never overlaps, each tensor
    # belongs to one op, float tensors hold no NaN or Inf.
    end, previous = 0, 0
    for start, stop, i in sorted(s for s in spans if s[1] > s[0]):
        if start < end:
            fail(f"tensor {previous}: data overlaps tensor {i}'s")
        end, previous = stop, i
    claimed = set()
    ops = []
    for i in range(n_ops):
        kind, n_params, *rest = _OP.unpack_from(data, HEADER_BYTES + OP_BYTES * i)
        params, first, count = rest[:10], rest[10], rest[11]
        if first + count > n_tensors:
            fail(f"op {i}: tensor range out of bounds")
        shared = claimed.intersection(range(first, first + count))
        if shared:
            fail(f"op {i}: tensor {min(shared)} already belongs to another op")
        claimed.update(range(first, first + count))
        if any(t.dtype == np.float32 and not np.isfinite(t).all() for t in tensors[first:first + count]):
            fail(f"op {i}: NaN or Inf in a float tensor")
        if n_params != _N_PARAMS.get(kind, n_params):
            fail(f"op {i}: expected {_N_PARAMS[kind]} params, got {n_params}")
        if kind not in _N_PARAMS:
            fail(f"op {i}: unknown op kind {kind}")
        ops.append(Op(kind, list(params[:n_params]), tensors[first:first + count]))
    for i, op in enumerate(ops):
        _check_op(op, lambda msg, i=i: fail(f"op {i}: {msg}"))
    _check_graph(ops, fail)
    head = ops[-1]
    if head.kind == HEAD:
        try:  # strict UTF-8, as the engine: no overlong forms, no surrogates
            n_names = len(class_names(ops))
        except UnicodeDecodeError as e:
            fail(f"class names are not valid UTF-8 ({e.reason})")
        if n_names != head.params[1]:
            fail(f"class names do not match the classifier's outputs ({n_names} names, "
                 f"{head.params[1]} classes)")
    return ops


# The engine's rules (csrc/core/model_file.cpp, validate_op and validate_graph), so that the
# Python readers (summary, the PyTorch rebuild) refuse what the engine refuses, with a message
# rather than a ZeroDivisionError or an IndexError deep inside.
_N_TENSORS = {INPUT: 2, CONV_FP: 3, BCONV: 5, HEAD: 5}
_MAX_CHANNELS = 1 << 16


def _check_conv_params(params, fail) -> None:
    cin, cout, k, stride, pad, _relu, residual = params
    if not (1 <= cin <= _MAX_CHANNELS and 1 <= cout <= _MAX_CHANNELS):
        fail("channels out of range")
    if not (1 <= k <= 7 and 1 <= stride <= 4 and 0 <= pad < k):
        fail("kernel/stride/pad out of range")
    if residual not in (RES_NONE, RES_IDENTITY, RES_DOWNSAMPLE):
        fail("unknown residual kind")
    if residual != RES_NONE and 2 * pad != k - 1:
        fail("a shortcut needs 'same' padding (2*pad == k-1)")
    if residual == RES_IDENTITY and (cin != cout or stride != 1):
        fail("identity shortcut needs cin == cout and stride 1")
    if residual == RES_DOWNSAMPLE and cout % cin:
        fail("downsample shortcut needs cout a multiple of cin")


def _check_op(op: Op, fail) -> None:
    """One op's parameters and tensors (dtype and shape), as the engine checks them."""
    if len(op.tensors) != _N_TENSORS[op.kind]:
        fail(f"expected {_N_TENSORS[op.kind]} tensors, got {len(op.tensors)}")
    f32, u64 = _DTYPES[1], _DTYPES[2]
    if op.kind == INPUT:
        h, w, c = op.params
        if not (1 <= h <= 4096 and 1 <= w <= 4096 and 1 <= c <= 64):
            fail("input size out of range")
        expected = [(f32, (c,)), (f32, (c,))]
    elif op.kind in (CONV_FP, BCONV):
        _check_conv_params(op.params, fail)
        cin, cout, k = op.params[:3]
        if op.kind == CONV_FP:
            expected = [(f32, (cout, k, k, cin)), (f32, (cout,)), (f32, (cout,))]
        else:
            expected = [(f32, (cin,)), (f32, (cin,)), (u64, (cout, k, k, (cin + 63) // 64)),
                        (f32, (cout,)), (f32, (cout,))]
    else:
        cin, classes = op.params
        if not (1 <= cin <= _MAX_CHANNELS and 1 <= classes <= _MAX_CHANNELS):
            fail("head sizes out of range")
        expected = [(f32, (cin,)), (f32, (cin,)), (f32, (classes, cin)), (f32, (classes,))]
        names = op.tensors[4]
        if names.dtype != np.uint8 or names.ndim != 1:
            fail("class names must be a 1-d u8 tensor")
    for j, (dtype, shape) in enumerate(expected):
        t = op.tensors[j]
        if t.dtype != dtype or t.shape != shape:
            fail(f"tensor {j}: expected {dtype.name}{list(shape)}, got {t.dtype.name}{list(t.shape)}")
    if op.kind == INPUT and not (op.tensors[1] > 0).all():
        fail("input std must be > 0")
    if op.kind == BCONV and op.params[0] % 64:
        junk = np.uint64(~((1 << (op.params[0] % 64)) - 1) & (2**64 - 1))
        if (op.tensors[2][..., -1] & junk).any():  # the kernels rely on zeros there
            fail("packed weight has bits set past cin")


def _check_graph(ops: list[Op], fail) -> None:
    """Input first, head last, and each op takes the channels the previous one gives."""
    if len(ops) == 1 and ops[0].kind == INPUT:
        fail("no compute op after the input op")
    channels = None
    for i, op in enumerate(ops):
        if op.kind == INPUT and i != 0:
            fail(f"op {i}: input op must come first")
        if op.kind == HEAD and i != len(ops) - 1:
            fail(f"op {i}: head must be last")
        if op.kind == INPUT:
            channels = op.params[2]
            continue
        cin, cout = op.params[:2]
        if channels is not None and cin != channels:
            fail(f"op {i}: expects {cin} channels, previous op gives {channels}")
        channels = cout


def read_model(path) -> list[Op]:
    path = Path(path)
    require_file(path, "model file", ModelFileError)
    return from_bytes(path.read_bytes(), str(path))


def layer_shapes(ops: list[Op], h: int = 32, w: int = 32) -> list[tuple[int, Op, int, int]]:
    """(op index, op, input H, input W) for every compute op, walking the graph from h x w."""
    out = []
    for i, op in enumerate(ops):
        if op.kind in (CONV_FP, BCONV):
            out.append((i, op, h, w))
            k, stride, pad = op.params[2:5]
            h, w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        elif op.kind == HEAD:
            out.append((i, op, h, w))
    return out


def class_names(ops: list[Op]) -> list[str]:
    head = ops[-1]
    if head.kind != HEAD or head.tensors[4].size == 0:
        return []
    return bytes(head.tensors[4]).decode().split("\n")
