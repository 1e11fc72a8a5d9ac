"""The native engine never crashes: bad model files and bad inputs give clear errors, ISAs agree,
and one engine may be shared by several Python threads.

Model files are built with numpy only (tests/modelfiles.py); structurally bad files get their
CRC-32 recomputed so that the parser's structural checks, not the checksum, have to catch them.
"""
from __future__ import annotations

import os
import re
import subprocess
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import modelfiles as mf  # noqa: E402
from xnornet import engine as xengine  # noqa: E402
from xnornet import modelfile  # noqa: E402
from xnornet.engine import Engine  # noqa: E402
from xnornet.modelfile import (BCONV, CONV_FP, HEAD, HEADER_BYTES, INPUT, OP_BYTES,  # noqa: E402
                               RES_DOWNSAMPLE, RES_IDENTITY, TENSOR_BYTES, ModelFileError,
                               to_bytes)

OPS = mf.small_ops(seed=0)
GOOD = to_bytes(OPS)
N_OPS, N_TENSORS = len(OPS), sum(len(op.tensors) for op in OPS)
TABLES_END = HEADER_BYTES + OP_BYTES * N_OPS + TENSOR_BYTES * N_TENSORS
# Tensor indices in GOOD (op: first tensor): input 0, conv_fp 2, bconv 5, bconv 10, head 15.
T_MEAN, T_STD, T_CONV_W, T_CONV_SCALE, T_BCONV_W, T_NAMES = 0, 1, 2, 3, 7, 19
CLASSES = 10
DATA_END = struct.unpack_from("<Q", GOOD, mf.tensor_at(GOOD, T_NAMES) + 24)[0] + OPS[-1].tensors[4].nbytes
SUPPORTED = [i["name"] for i in xengine.implementations() if i["supported"]]
UNSUPPORTED = [i["name"] for i in xengine.implementations() if not i["supported"]]


def load(data, **kw) -> Engine:
    kw.setdefault("threads", 1)
    return Engine.from_bytes(data, **kw)


def expect_bad(data, *words):
    """Loading data raises ModelFileError whose message names the problem (every word in it),
    and the Python reader (summary, the PyTorch rebuild) refuses the file too."""
    with pytest.raises(ModelFileError) as info:
        load(data)
    with pytest.raises(ModelFileError, match="invalid model file"):
        modelfile.from_bytes(data)
    msg = str(info.value).lower()
    for w in words:
        assert w.lower() in msg, f"{w!r} not in {msg!r}"
    return msg


def images_u8(n, h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def images_f32(n, c=3, h=8, w=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)


@pytest.fixture(scope="module")
def eng():
    return load(GOOD, threads=2)


def test_reference_model_loads_and_runs(eng):
    """The base of every corruption below is itself valid."""
    assert TABLES_END < DATA_END <= len(GOOD) and DATA_END % 64
    cut = mf.patch(GOOD[:DATA_END], 16, "<Q", DATA_END)  # only the final padding removed
    np.testing.assert_array_equal(load(cut).run(images_u8(2)), eng.run(images_u8(2)))
    assert len(GOOD) % 64 == 0 and struct.unpack_from("<Q", GOOD, 16)[0] == len(GOOD)
    assert mf.fix_crc(GOOD) == GOOD
    assert eng.class_names == [f"class{i}" for i in range(CLASSES)]
    out = eng.run(images_u8(3))
    assert out.shape == (3, CLASSES) and out.dtype == np.float32 and np.isfinite(out).all()
    # The weights matter: another seed gives other logits.
    assert not np.allclose(out, load(mf.small_model(seed=1)).run(images_u8(3)))


# ---------------------------------------------------------------------------------------------
# 1. Bad files: a ModelFileError naming the problem, never a crash.
# ---------------------------------------------------------------------------------------------

def test_wrong_magic():
    expect_bad(b"NOTXNOR\0" + GOOD[8:], "magic")
    expect_bad(mf.patch(GOOD, 0, "<8s", b"xnornet\0"), "magic")


@pytest.mark.parametrize("version", [0, 2, 0xFFFFFFFF])
def test_wrong_version(version):
    expect_bad(mf.patch(GOOD, 8, "<I", version), "version", str(version))


@pytest.mark.parametrize("hbytes", [0, 32, 65, 0xFFFFFFFF])
def test_wrong_header_size(hbytes):
    expect_bad(mf.patch(GOOD, 12, "<I", hbytes), "header")


@pytest.mark.parametrize("length", [0, 1, 10, 63])
def test_shorter_than_header(length):
    expect_bad(GOOD[:length], "shorter than the header")


@pytest.mark.parametrize("length", [64, 64 + 5, 128, TABLES_END - 1, TABLES_END + 64,
                                    len(GOOD) // 2, len(GOOD) - 64, len(GOOD) - 1])
def test_truncated(length):
    expect_bad(GOOD[:length], "truncated")


@pytest.mark.parametrize("length", [64, 64 + 5, 128, 400, TABLES_END - 1, TABLES_END,
                                    TABLES_END + 64, DATA_END - 64, DATA_END - 1])
def test_truncated_with_consistent_header(length):
    """Truncated, with the size field and CRC fixed: the table/tensor bounds checks catch it.
    (Cutting only the zero padding after the last tensor leaves a valid file.)"""
    data = mf.patch(GOOD[:length], 16, "<Q", length) if length >= 24 else GOOD[:length]
    msg = expect_bad(data)
    assert "past the end" in msg or "out of bounds" in msg, msg


@pytest.mark.parametrize("extra", [b"\0", b"\0" * 64, b"garbage!" * 100])
def test_trailing_garbage(extra):
    expect_bad(GOOD + extra, "padded")
    # Even with the CRC recomputed: the size field still disagrees.
    expect_bad(mf.fix_crc(GOOD + extra), "padded")


@pytest.mark.parametrize("where", [HEADER_BYTES, HEADER_BYTES + 70, TABLES_END - 1, TABLES_END + 3,
                                   len(GOOD) // 2, len(GOOD) - 1])
def test_checksum_mismatch(where):
    data = bytearray(GOOD)
    data[where] ^= 0x10
    expect_bad(bytes(data), "checksum")
    data = bytearray(GOOD)
    data[24] ^= 1  # the stored CRC itself
    expect_bad(bytes(data), "checksum")


@pytest.mark.parametrize("n_ops,words", [(0, "absurd"), (4097, "absurd"), (0xFFFFFFFF, "absurd"),
                                         (1000, "past the end")])
def test_absurd_op_count(n_ops, words):
    expect_bad(mf.patch(GOOD, mf.N_OPS_AT, "<I", n_ops), words)


@pytest.mark.parametrize("n_tensors,words", [(65537, "absurd"), (0xFFFFFFFF, "absurd"),
                                             (65536, "past the end"), (1000, "past the end")])
def test_absurd_tensor_count(n_tensors, words):
    expect_bad(mf.patch(GOOD, mf.N_TENSORS_AT, "<I", n_tensors), words)


@pytest.mark.parametrize("n_tensors", [0, 3, N_TENSORS - 1])
def test_too_few_tensors_for_the_ops(n_tensors):
    # The tensor table moves nowhere (it follows the op table) but the ops now reach past its end.
    expect_bad(mf.patch(GOOD, mf.N_TENSORS_AT, "<I", n_tensors), "tensor range out of bounds")


@pytest.mark.parametrize("n_ops", [1, 2, 4, 6])
def test_op_count_off_by_some(n_ops):
    # The tensor table is then read from the wrong place: some check must refuse it.
    expect_bad(mf.patch(GOOD, mf.N_OPS_AT, "<I", n_ops))


def _tensor_offset(data, t):
    return struct.unpack_from("<Q", data, mf.tensor_at(data, t) + 24)[0]


@pytest.mark.parametrize("offset", [len(GOOD), len(GOOD) + 64, len(GOOD) - 64, 2**40,
                                    2**64 - 64, 0, 64, TABLES_END - 64])
def test_tensor_offset_out_of_bounds(offset):
    # The conv weight (6912 bytes) cannot start at any of these and stay inside the data region.
    at = mf.tensor_at(GOOD, T_CONV_W) + 24
    expect_bad(mf.patch(GOOD, at, "<Q", offset), "tensor 2", "out of bounds")


@pytest.mark.parametrize("offset", [0, 64, (TABLES_END - 1) // 64 * 64])
def test_tensor_data_may_not_alias_the_tables(offset):
    """A small tensor fits inside the header or the tables: both readers refuse it there."""
    at = mf.tensor_at(GOOD, T_MEAN) + 24
    _both_refuse(mf.patch(GOOD, at, "<Q", offset), "tensor 0", "out of bounds")


@pytest.mark.parametrize("delta", [1, 4, 8, 32, 63])
def test_tensor_offset_misaligned(delta):
    at = mf.tensor_at(GOOD, T_CONV_SCALE) + 24
    expect_bad(mf.patch(GOOD, at, "<Q", _tensor_offset(GOOD, T_CONV_SCALE) + delta),
               "tensor 3", "misaligned")


@pytest.mark.parametrize("ndim,dims", [(2, (2**31, 2**31, 0, 0)), (4, (2**32 - 1,) * 4),
                                       (4, (2**16,) * 4), (1, (2**32 - 1, 0, 0, 0)),
                                       (3, (2**20, 2**20, 2**20, 0)), (1, (2**30, 0, 0, 0))])
def test_tensor_huge_dims(ndim, dims):
    msg = expect_bad(mf.patch(GOOD, mf.tensor_at(GOOD, T_CONV_W) + 4, "<I4I", ndim, *dims),
                     "tensor 2")
    assert "absurd" in msg or "out of bounds" in msg, msg


@pytest.mark.parametrize("ndim", [5, 100, 0xFFFFFFFF])
def test_tensor_too_many_dims(ndim):
    expect_bad(mf.patch(GOOD, mf.tensor_at(GOOD, T_CONV_W) + 4, "<I", ndim), "dims")


@pytest.mark.parametrize("dtype", [0, 4, 255, 0xFFFFFFFF])
def test_unknown_dtype(dtype):
    expect_bad(mf.patch(GOOD, mf.tensor_at(GOOD, T_CONV_SCALE), "<I", dtype), "dtype")


@pytest.mark.parametrize("first,count", [(N_TENSORS, 1), (N_TENSORS + 1, 0), (0, N_TENSORS + 1),
                                         (2**32 - 1, 2), (1, 2**32 - 1), (2**32 - 1, 2**32 - 1)])
def test_op_tensor_range_out_of_bounds(first, count):
    expect_bad(mf.patch(GOOD, mf.op_at(1) + 48, "<II", first, count), "op 1", "tensor range")


@pytest.mark.parametrize("first,count", [(2, 2), (2, 4), (2, 0), (0, 3), (5, 3)])
def test_op_with_wrong_tensors(first, count):
    """In range, but the wrong number or the wrong tensors for a CONV_FP op."""
    msg = expect_bad(mf.patch(GOOD, mf.op_at(1) + 48, "<II", first, count))
    assert ("op 1: expected 3 tensors" in msg or "conv weight: expected" in msg
            or "already belongs to another op" in msg), msg


def _both_refuse(data, *patterns):
    """The engine and the Python reader refuse the file, each naming the problem (regexes)."""
    for read in (load, modelfile.from_bytes):
        with pytest.raises(ModelFileError) as info:
            read(data)
        for pattern in patterns:
            assert re.search(pattern, str(info.value)), (read, pattern, str(info.value))


def test_ops_may_not_share_tensors():
    """Shared ranges would let a small file make the engine prepare the same large weights
    thousands of times over (a memory bomb); each tensor belongs to one op."""
    second_bconv = mf.first_tensor(OPS, 3)
    data = mf.patch(GOOD, mf.op_at(3) + 48, "<II", mf.first_tensor(OPS, 2), 5)  # op 2's tensors
    _both_refuse(data, "op 3", "already belongs to another op")
    assert second_bconv != mf.first_tensor(OPS, 2)


def test_tensor_data_may_not_overlap():
    weight_at = struct.unpack_from("<Q", GOOD, mf.tensor_at(GOOD, T_CONV_W) + 24)[0]
    data = mf.patch(GOOD, mf.tensor_at(GOOD, T_CONV_SCALE) + 24, "<Q", weight_at)
    _both_refuse(data, "tensor [23]: data overlaps tensor [23]'s")  # same start: either order


@pytest.mark.parametrize("op,tensor,value", [(1, 0, np.nan), (2, 3, np.inf), (0, 1, np.inf),
                                             (4, 2, -np.inf), (0, 0, np.nan)])
def test_non_finite_floats_are_refused(op, tensor, value):
    ops = mf.small_ops()
    ops[op].tensors[tensor] = ops[op].tensors[tensor].copy()
    ops[op].tensors[tensor].flat[0] = value
    _both_refuse(to_bytes(ops), f"op {op}", "NaN or Inf")


@pytest.mark.parametrize("raw", [b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80",
                                 b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
                                 b"\x80", b"\xe2\x82", b"\xff"])
def test_class_names_must_be_strict_utf8(raw):
    """What Python's strict decoder refuses (overlong forms, surrogates, past U+10FFFF, stray
    or truncated bytes), the engine refuses too: else engine.class_names would raise later."""
    with pytest.raises(UnicodeDecodeError):
        raw.decode()
    expect_bad(_names_model(raw + b"\nb", 2), "class names")


def test_class_names_in_every_utf8_length_load():
    names = ["a", "\u00e9t\u00e9", "\u20ac", "\U0001f600", "\ud7ff", "\U0010ffff"]
    e = load(_names_model("\n".join(names).encode(), len(names)))
    assert e.class_names == names


def test_inputs_too_large_for_int_indexing_are_refused():
    """The kernels index one image's maps with int: sizes where that could wrap are a clear
    ValueError before any buffer is sized, never an overrun."""
    e = load(GOOD)
    with pytest.raises(ValueError, match="too large"):
        e._native.output_shape(1, 40000, 40000)  # 64 channels x 1.6e9 pixels
    with pytest.raises(ValueError, match="a batch of 268435456 images is too large"):
        e._native.output_shape(2**28, 8, 8)  # rows of the batch: n * (h + 2 pad)
    assert list(e._native.output_shape(3, 8, 8)) == [3, 10]
    big = np.zeros((1, 4100, 4100, 3), np.uint8)  # 64 channels x 16.8e6 pixels > 2^30 per map
    with pytest.raises(ValueError, match="input of 4100x4100 is too large"):
        e.run(big)
    with pytest.raises(ValueError, match="input of 4100x4100 is too large"):
        e.run(np.zeros((1, 3, 4100, 4100), np.float32))


@pytest.mark.parametrize("t,field,value,words", [
    (T_CONV_SCALE, 0, 3, "conv scale"),             # f32 -> u8 (smaller, stays in bounds)
    (T_CONV_SCALE, 2, 32, "conv scale"),            # dims [64] -> [32]
    (T_CONV_SCALE, 1, 0, "conv scale"),             # ndim 1 -> 0 (a scalar)
    (T_CONV_W, 2, 63, "conv weight"),               # cout dim
    (T_CONV_W, 5, 4, "tensor 2: data overlaps"),    # cin dim 3 -> 4: runs into the next tensor
    (T_BCONV_W, 0, 1, "packed weight"),             # u64 -> f32
    (T_BCONV_W, 5, 2, "tensor 7: data overlaps"),  # words 1 -> 2: runs into the next tensor
    (T_MEAN, 2, 2, "input mean"),
    (T_STD, 0, 3, "input std"),
])
def test_tensor_dims_or_dtype_wrong_for_op(t, field, value, words):
    expect_bad(mf.patch(GOOD, mf.tensor_at(GOOD, t) + 4 * field, "<I", value), words)


@pytest.mark.parametrize("ndim,dims", [(2, (69, 1)), (0, ()), (2, (1, 69))])
def test_class_names_must_be_1d_u8(ndim, dims):
    at = mf.tensor_at(GOOD, T_NAMES) + 4
    expect_bad(mf.patch(GOOD, at, f"<I{len(dims)}I", ndim, *dims), "class names must be a 1-d u8")
    # u64 names (9 words = 72 bytes, inside the file)
    expect_bad(mf.patch(GOOD, at - 4, "<III", 2, 1, 9), "class names must be a 1-d u8")


def test_tensor_dtype_mismatch_message_names_the_dtype():
    expect_bad(mf.patch(GOOD, mf.tensor_at(GOOD, T_CONV_SCALE), "<I", 3), "conv scale", "dtype")


def test_tensor_shape_error_names_the_op():
    expect_bad(mf.patch(GOOD, mf.tensor_at(GOOD, T_BCONV_W) + 8, "<I", 63), "op 2", "packed weight")


@pytest.mark.parametrize("op", [0, 1, 4])
@pytest.mark.parametrize("n_params", [0, 1, 11, 0xFFFFFFFF])
def test_op_n_params_is_checked(op, n_params):
    expect_bad(mf.patch(GOOD, mf.op_at(op) + 4, "<I", n_params), f"op {op}", "param")


@pytest.mark.parametrize("kind", [0, 5, 100, 0xFFFFFFFF])
def test_unknown_op_kind(kind):
    expect_bad(mf.patch(GOOD, mf.op_at(2), "<I", kind), "op 2", "unknown op kind", str(kind))


@pytest.mark.parametrize("op", [1, 2])  # CONV_FP 3->64 and BCONV 64->64
@pytest.mark.parametrize("param,value,words", [
    (0, 0, "channels"), (0, -1, "channels"), (0, 65537, "channels"), (0, 2**31 - 1, "channels"),
    (0, -2**31, "channels"),
    (1, 0, "channels"), (1, -64, "channels"), (1, 2**31 - 1, "channels"),
    (2, 0, "kernel"), (2, -3, "kernel"), (2, 8, "kernel"), (2, 2**31 - 1, "kernel"),
    (3, 0, "stride"), (3, -1, "stride"), (3, 5, "stride"), (3, 2**31 - 1, "stride"),
    (4, -1, "pad"), (4, 3, "pad"), (4, 100, "pad"), (4, -2**31, "pad"),
    (6, 3, "residual"), (6, -1, "residual"), (6, 2**31 - 1, "residual"),
])
def test_conv_params_out_of_range(op, param, value, words):
    expect_bad(mf.patch(GOOD, mf.param_at(op, param), "<i", value), f"op {op}", words)


@pytest.mark.parametrize("op,param,value", [(1, 2, 2), (1, 2, 7), (1, 2, 5), (1, 1, 32),
                                            (1, 0, 4), (3, 0, 32), (3, 1, 192), (3, 1, 64)])
def test_conv_params_in_range_but_tensors_disagree(op, param, value):
    # k or channels changed within range: the tensors no longer have the shapes the params imply.
    expect_bad(mf.patch(GOOD, mf.param_at(op, param), "<i", value), "expected")


@pytest.mark.parametrize("param,value,words", [
    (0, 0, "input size"), (0, -1, "input size"), (0, 4097, "input size"), (1, 0, "input size"),
    (1, 2**31 - 1, "input size"), (2, 0, "input size"), (2, 65, "input size"), (2, -3, "input size"),
    (2, 4, "input mean"),
])
def test_input_params_out_of_range(param, value, words):
    expect_bad(mf.patch(GOOD, mf.param_at(0, param), "<i", value), words)


@pytest.mark.parametrize("param,value,words", [
    (0, 0, "head sizes"), (0, -1, "head sizes"), (0, 65537, "head sizes"),
    (1, 0, "head sizes"), (1, -10, "head sizes"), (1, 2**31 - 1, "head sizes"),
    (1, 11, "classifier weight"), (0, 64, "head scale"),
])
def test_head_params_out_of_range(param, value, words):
    expect_bad(mf.patch(GOOD, mf.param_at(4, param), "<i", value), words)


def test_identity_residual_needs_same_channels_and_stride_1():
    # BCONV 64->128 stride 2: identity instead of downsample.
    expect_bad(mf.patch(GOOD, mf.param_at(3, 6), "<i", RES_IDENTITY), "op 3", "identity")
    # BCONV 64->64 identity, stride 1 -> 2.
    expect_bad(mf.patch(GOOD, mf.param_at(2, 3), "<i", 2), "op 2", "identity")
    rng = np.random.default_rng(0)
    expect_bad(to_bytes([mf.conv_fp(rng, 3, 8, residual=RES_IDENTITY)]), "op 0", "identity")


@pytest.mark.parametrize("op", [2, 3])
@pytest.mark.parametrize("pad", [0, 2])
def test_shortcut_needs_same_padding(op, pad):
    """x + conv(x) needs the conv to keep the grid: a shortcut with 2*pad != k-1 is refused."""
    expect_bad(mf.patch(GOOD, mf.param_at(op, 4), "<i", pad), f"op {op}", "same")


@pytest.mark.parametrize("k,pad", [(3, 0), (3, 2), (5, 1), (1, 0), (5, 2), (7, 3)])
def test_identity_shortcut_that_changes_spatial_size_is_refused(k, pad):
    rng = np.random.default_rng(6)
    data = to_bytes([mf.conv_fp(rng, 8, 8, k=k, pad=pad, residual=RES_IDENTITY), mf.head(rng, 8, 4)])
    if 2 * pad == k - 1:
        assert load(data).run(images_f32(2, c=8, h=6, w=6)).shape == (2, 4)
    else:
        expect_bad(data, "op 0", "same")


def test_downsample_needs_cout_multiple_of_cin():
    rng = np.random.default_rng(0)
    ops = [mf.input_op(), mf.conv_fp(rng, 3, 64),
           mf.bconv(rng, 64, 96, stride=2, residual=RES_DOWNSAMPLE), mf.head(rng, 96)]
    expect_bad(to_bytes(ops), "op 2", "multiple")
    expect_bad(to_bytes([mf.conv_fp(rng, 8, 4, stride=2, residual=RES_DOWNSAMPLE)]), "multiple")


def test_head_must_be_last():
    rng = np.random.default_rng(0)
    ops = [mf.input_op(), mf.conv_fp(rng, 3, 16), mf.head(rng, 16, 10), mf.conv_fp(rng, 10, 10)]
    expect_bad(to_bytes(ops), "op 2", "head must be last")
    expect_bad(to_bytes([mf.head(rng, 3, 4), mf.head(rng, 4, 4)]), "op 0", "head must be last")


def test_input_must_be_first():
    rng = np.random.default_rng(0)
    expect_bad(to_bytes([mf.conv_fp(rng, 3, 3), mf.input_op(), mf.head(rng, 3)]),
               "op 1", "input op must come first")
    expect_bad(to_bytes([mf.input_op(), mf.input_op(), mf.head(rng, 3)]), "op 1", "first")
    # In the reference file: op 2 (a BCONV) turned into an INPUT op.
    expect_bad(mf.patch(GOOD, mf.op_at(2), "<I", INPUT), "op 2")


@pytest.mark.parametrize("ops,where", [
    (lambda r: [mf.input_op(), mf.conv_fp(r, 4, 8), mf.head(r, 8)], "op 1"),
    (lambda r: [mf.input_op(), mf.conv_fp(r, 3, 8), mf.head(r, 16)], "op 2"),
    (lambda r: [mf.conv_fp(r, 3, 64), mf.bconv(r, 32, 64), mf.head(r, 64)], "op 1"),
    (lambda r: [mf.input_op(c=1), mf.conv_fp(r, 3, 8)], "op 1"),
])
def test_channel_mismatch_between_ops(ops, where):
    expect_bad(to_bytes(ops(np.random.default_rng(0))), where, "channels")


@pytest.mark.parametrize("cin,bit", [(40, 40), (40, 63), (1, 1), (100, 100 - 64), (100, 63)])
def test_packed_weight_bits_past_cin(cin, bit):
    rng = np.random.default_rng(0)
    ops = [mf.bconv(rng, cin, 16), mf.head(rng, 16, 4)]
    assert load(to_bytes(ops)) is not None  # valid before the stray bit
    w = ops[0].tensors[2]
    w[5, 1, 2, -1] |= np.uint64(1) << np.uint64(bit)
    expect_bad(to_bytes(ops), "op 0", "bits set past cin")


@pytest.mark.parametrize("names", [["a", "b"], [f"c{i}" for i in range(11)], [], ["x"] * 9])
def test_class_name_count_mismatch(names):
    rng = np.random.default_rng(0)
    expect_bad(to_bytes([mf.input_op(), mf.conv_fp(rng, 3, 8), mf.head(rng, 8, 10, names)]),
               "class names")


def _names_model(raw: bytes, classes: int) -> bytes:
    rng = np.random.default_rng(0)
    ops = [mf.input_op(), mf.conv_fp(rng, 3, 8), mf.head(rng, 8, classes)]
    ops[2].tensors[4] = np.frombuffer(raw, np.uint8).copy()
    return to_bytes(ops)


def test_class_names_not_utf8():
    _both_refuse(_names_model(b"\xff\xfe\nb", 2), "class names")


@pytest.mark.parametrize("raw,names", [(b"a\nb", ["a", "b"]), (b"\nx y", ["", "x y"]),
                                       ("chat\nf\u00e9e\n\u732b".encode(), ["chat", "f\u00e9e", "\u732b"])])
def test_class_names_same_in_engine_and_python_reader(raw, names):
    data = _names_model(raw, len(names))
    assert load(data).class_names == modelfile.class_names(modelfile.from_bytes(data)) == names


def test_class_names_round_trip():
    names = ["airplane", "auto mobile", "", "deer", "\u00e9t\u00e9", "x" * 300]
    rng = np.random.default_rng(0)
    data = to_bytes([mf.input_op(), mf.conv_fp(rng, 3, 8), mf.head(rng, 8, len(names), names)])
    assert load(data).class_names == names
    assert modelfile.class_names(modelfile.from_bytes(data)) == names


@pytest.mark.parametrize("bad", [0.0, -0.0, -1.0, np.nan, -np.inf])
def test_non_positive_std(bad):
    std = mf.STD.copy()
    std[1] = bad
    rng = np.random.default_rng(0)
    expect_bad(to_bytes([mf.input_op(std=std), mf.conv_fp(rng, 3, 8), mf.head(rng, 8)]), "std")
    # The same through a byte patch of the reference file.
    at = _tensor_offset(GOOD, T_STD) + 4 * 2
    expect_bad(mf.patch(GOOD, at, "<f", bad), "op 0", "std")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "no-such-model.xnor"
    with pytest.raises(ModelFileError, match="no-such-model.xnor"):
        Engine.load(path)
    with pytest.raises(ModelFileError, match="is a folder, not a file"):
        Engine.load(tmp_path)


def test_load_from_disk_good_and_bad(tmp_path):
    good = tmp_path / "good.xnor"
    good.write_bytes(GOOD)
    e = Engine.load(good, threads=1)
    np.testing.assert_array_equal(e.run(images_u8(2)), load(GOOD).run(images_u8(2)))
    bad = tmp_path / "bad.xnor"
    bad.write_bytes(GOOD[:1000])
    with pytest.raises(ModelFileError, match="bad.xnor") as info:
        Engine.load(str(bad))
    assert "truncated" in str(info.value)
    empty = tmp_path / "empty.xnor"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="shorter than the header"):
        Engine.load(empty)


def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)
    with pytest.raises(ValueError):
        load(b"")


def test_python_reader_huge_dims_are_a_model_file_error():
    data = mf.patch(GOOD, mf.tensor_at(GOOD, T_CONV_W) + 4, "<I4I", 4, *(2**16,) * 4)
    with pytest.raises(ModelFileError):
        modelfile.from_bytes(data)


# ---------------------------------------------------------------------------------------------
# 2. Fuzzing: mutated files load or raise ModelFileError; what loads runs or raises ValueError.
# ---------------------------------------------------------------------------------------------

_INTERESTING = [0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 128, 4096, 65536, 65537, 2**31 - 1, 2**31,
                2**32 - 1, 2**32 - 64]
_SMALL = st.integers(-2, 9) | st.sampled_from([64, 128, 2**31 - 1, -2**31])


def _op_entry(data, i):
    """(kind, params[10]) of op i, read the way the engine reads them (n_params ignored)."""
    kind, _, *params = struct.unpack_from("<II10i", data, mf.op_at(i))
    return kind, params


def test_input_only_model_is_refused():
    """Nothing to compute: once a crash in run() (no layers), now refused when the file loads."""
    expect_bad(to_bytes([mf.input_op()]), "no compute op")


def _check_run(engine, data):
    n_ops = struct.unpack_from("<I", data, mf.N_OPS_AT)[0]
    first, (last, last_params) = _op_entry(data, 0), _op_entry(data, n_ops - 1)
    c = first[1][2] if first[0] == INPUT else first[1][0]
    assert not (n_ops == 1 and first[0] == INPUT), "an INPUT-only model must not load"
    if not 1 <= c <= 256:
        return
    rng = np.random.default_rng(len(data))
    for n, h, w in [(2, 8, 8), (1, 6, 6), (3, 4, 4)]:
        if first[0] == INPUT:
            x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
        else:
            x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        try:
            out = engine.run(x)
        except ValueError as e:
            assert str(e), "empty error message"
            continue
        assert out.dtype == np.float32 and out.shape[0] == n
        if last == HEAD:
            assert out.shape == (n, last_params[1])
            np.testing.assert_array_equal(engine.predict(x), out.argmax(axis=1))
        else:
            assert out.ndim == 4 and out.shape[1] == last_params[1]


_mutation = st.one_of(
    # a random byte, mostly in the tables (past the magic/version/size/CRC fields)
    st.tuples(st.just("<B"), st.integers(28, TABLES_END - 1) | st.integers(0, len(GOOD) - 1),
              st.integers(0, 255)),
    # an interesting 32-bit value over an aligned word of the header or tables
    st.tuples(st.just("<I"), st.integers(28 // 4, TABLES_END // 4 - 1).map(lambda i: 4 * i),
              st.sampled_from(_INTERESTING)),
    # a small or extreme value for one op parameter (op i, param j)
    st.tuples(st.just("<i"), st.builds(mf.param_at, st.integers(0, N_OPS - 1), st.integers(0, 9)),
              _SMALL),
)


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutations=st.lists(_mutation, min_size=1, max_size=4),
       resize=st.sampled_from([None] * 6 + ["cut", "extend"]),
       cut=st.integers(0, len(GOOD)), extra=st.binary(min_size=1, max_size=100),
       fix_crc=st.sampled_from([True, True, True, False]),
       fix_size=st.sampled_from([True, True, True, False]))
def test_fuzz_mutated_files_never_crash(mutations, resize, cut, extra, fix_crc, fix_size):
    data = bytearray(GOOD)
    for fmt, at, value in mutations:
        struct.pack_into(fmt, data, at, value)
    if resize == "cut":
        data = data[:cut]
    elif resize == "extend":
        data += extra
    if fix_size and len(data) >= 24:
        struct.pack_into("<Q", data, 16, len(data))
    if fix_crc and len(data) >= 28:
        data = bytearray(mf.fix_crc(data))
    data = bytes(data)
    try:
        python_ops = modelfile.from_bytes(data)
    except ModelFileError as e:
        python_ops = e
    try:
        engine = load(data)
    except ModelFileError as e:
        assert "invalid model file" in str(e)
        # The two readers agree on what is a valid file.
        assert isinstance(python_ops, ModelFileError), f"only the engine refuses it: {e}"
        return
    assert not isinstance(python_ops, ModelFileError), f"only Python refuses it: {python_ops}"
    _check_run(engine, data)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_random_op_chains(seed):
    """Random chains of ops (odd channels, every k / stride / pad, shortcuts, with and without
    INPUT and HEAD): loading succeeds or raises ModelFileError; running on random sizes succeeds
    or raises ValueError; every ISA and thread count gives the same result, and a batch gives
    the results of its images one by one."""
    rng = np.random.default_rng(seed)
    ops = mf.random_chain(rng)
    data = to_bytes(ops)
    try:
        engines = [load(data, isa=isa, threads=t) for isa in ("generic", SUPPORTED[0])
                   for t in (1, 2)]
    except ModelFileError:
        return
    c = ops[0].params[2] if ops[0].kind == INPUT else ops[0].params[0]
    for _ in range(2):
        n, h, w = int(rng.integers(0, 5)), int(rng.integers(1, 13)), int(rng.integers(1, 13))
        x = (rng.integers(0, 256, (n, h, w, c), dtype=np.uint8) if ops[0].kind == INPUT
             else rng.standard_normal((n, c, h, w)).astype(np.float32))
        try:
            ref = engines[0].run(x)
        except ValueError:
            for e in engines[1:]:
                with pytest.raises(ValueError):
                    e.run(x)
            continue
        assert ref.shape[0] == n and np.isfinite(ref).all()
        for e in engines[1:]:
            np.testing.assert_allclose(e.run(x), ref, rtol=1e-5, atol=1e-5)
        for i in range(n):
            np.testing.assert_allclose(engines[-1].run(x[i:i + 1]), ref[i:i + 1], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 3. Bad inputs to run(): a ValueError saying what is wrong; odd but valid inputs handled.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 8, 3), (1, 1, 8, 8, 3), (3,), (), (2, 1, 1, 8, 8, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_run_wrong_ndim(eng, shape, dtype):
    with pytest.raises(ValueError, match="4-d"):
        eng.run(np.zeros(shape, dtype))


@pytest.mark.parametrize("shape", [(1, 8, 8, 4), (1, 8, 8, 1), (2, 3, 8, 8), (1, 8, 8, 0)])
def test_run_wrong_channels_uint8_nhwc(eng, shape):
    with pytest.raises(ValueError, match=r"expected 3 channels in \(N, H, W, C\)"):
        eng.run(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (1, 1, 8, 8), (2, 8, 8, 3), (1, 0, 8, 8)])
def test_run_wrong_channels_float_nchw(eng, shape):
    with pytest.raises(ValueError, match=r"expected 3 channels in \(N, C, H, W\)"):
        eng.run(np.zeros(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.uint64, bool,
                                   np.complex64, object])
def test_run_wrong_dtype(eng, dtype):
    x = np.zeros((1, 8, 8, 3), dtype)
    with pytest.raises(ValueError, match="uint8") as info:
        eng.run(x)
    assert np.dtype(dtype).name in str(info.value)


def test_run_nested_lists_of_ints_are_refused(eng):
    with pytest.raises(ValueError, match="uint8"):
        eng.run(np.zeros((1, 8, 8, 3), np.int64).tolist())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_run_nan_inf(eng, bad, dtype):
    x = images_f32(3).astype(dtype)
    x[2, 1, 7, 0] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        eng.run(x)


@pytest.mark.parametrize("shape", [(1, 0, 8, 3), (1, 8, 0, 3), (2, 0, 0, 3), (0, 0, 8, 3)])
def test_run_empty_spatial_uint8(eng, shape):
    with pytest.raises(ValueError, match="no pixels"):
        eng.run(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(1, 3, 0, 8), (1, 3, 8, 0), (0, 3, 0, 0)])
def test_run_empty_spatial_float(eng, shape):
    with pytest.raises(ValueError, match="no pixels"):
        eng.run(np.zeros(shape, np.float32))


@pytest.mark.parametrize("hw", [(7, 7), (9, 8), (8, 5), (1, 1), (3, 2), (15, 16)])
def test_run_odd_sizes_where_downsample_needs_even(eng, hw):
    with pytest.raises(ValueError, match="divide evenly") as info:
        eng.run(np.zeros((2, *hw, 3), np.uint8))
    assert f"{hw[0]}x{hw[1]}" in str(info.value) and "(2, " in str(info.value)
    with pytest.raises(ValueError, match="divide evenly"):
        eng.run(np.zeros((1, 3, *hw), np.float32))


@pytest.fixture(scope="module")
def valid_conv_engine():
    """CONV_FP k=3 pad=0 stride=1 then a head: needs images of at least 3x3."""
    rng = np.random.default_rng(3)
    return load(to_bytes([mf.input_op(), mf.conv_fp(rng, 3, 8, pad=0), mf.head(rng, 8, 4)]))


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (2, 8), (8, 1)])
def test_run_image_too_small(valid_conv_engine, hw):
    with pytest.raises(ValueError, match="too small"):
        valid_conv_engine.run(np.zeros((1, *hw, 3), np.uint8))
    with pytest.raises(ValueError, match="too small"):
        valid_conv_engine.run(np.zeros((2, 3, *hw), np.float32))
    assert valid_conv_engine.run(np.zeros((1, 3, 3, 3), np.uint8)).shape == (1, 4)


@pytest.mark.parametrize("kind", [CONV_FP, BCONV])
@pytest.mark.parametrize("hw", [(2, 2), (2, 8), (8, 2), (1, 1)])
def test_run_kernel_larger_than_input_with_stride(kind, hw):
    """(in + 2*pad - k) < 0 with a stride: truncating division once gave 1 output (and a BCONV
    then read past its packed input); it must be 'too small'."""
    rng = np.random.default_rng(4)
    conv = mf.conv_fp if kind == CONV_FP else mf.bconv
    for tail in ([mf.head(rng, 8, 4)], []):
        e = load(to_bytes([conv(rng, 8, 8, k=3, stride=2, pad=0)] + tail), threads=2)
        for n in (1, 3):
            with pytest.raises(ValueError, match="too small"):
                e.run(images_f32(n, c=8, h=hw[0], w=hw[1]))
        assert e.run(images_f32(3, c=8, h=3, w=4)).shape == ((3, 4) if tail else (3, 8, 1, 1))


def test_run_headless_model_too_small_message():
    rng = np.random.default_rng(5)
    e = load(to_bytes([mf.conv_fp(rng, 3, 8, k=3, pad=0)]))
    assert e.run(images_f32(1, h=5, w=5)).shape == (1, 8, 3, 3)
    for hw in [(1, 1), (2, 5), (5, 2)]:
        with pytest.raises(ValueError, match="too small") as info:
            e.run(images_f32(1, h=hw[0], w=hw[1]))
        assert str((1, 3) + hw) in str(info.value)  # the input shape is named


def test_run_batch_of_zero(eng):
    for x in (np.zeros((0, 8, 8, 3), np.uint8), np.zeros((0, 3, 8, 8), np.float32),
              np.zeros((0, 3, 16, 16), np.float64)):
        out = eng.run(x)
        assert out.shape == (0, CLASSES) and out.dtype == np.float32
        assert eng.predict(x).shape == (0,)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_batches_agree_with_single_images(eng, n):
    x = images_u8(n, seed=n)
    out = eng.run(x)
    assert out.shape == (n, CLASSES)
    for i in range(n):
        np.testing.assert_allclose(out[i], eng.run(x[i:i + 1])[0], rtol=1e-5, atol=1e-5)
    pred = eng.predict(x)
    assert pred.dtype == np.int64 and pred.shape == (n,)
    np.testing.assert_array_equal(pred, out.argmax(axis=1))


def test_predict_is_argmax_of_run_float(eng):
    x = images_f32(9, seed=9)
    np.testing.assert_array_equal(eng.predict(x), eng.run(x).argmax(axis=1))


def test_larger_images_run(eng):
    out = eng.run(images_u8(2, 32, 24))
    assert out.shape == (2, CLASSES) and np.isfinite(out).all()


def test_non_contiguous_uint8_input(eng):
    rng = np.random.default_rng(11)
    nchw = rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    views = [nchw.transpose(0, 2, 3, 1),                                  # NCHW memory as NHWC
             rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)[:, ::2, 1::2],
             images_u8(4, seed=12)[::-1],                                 # negative stride
             rng.integers(0, 256, (8, 8, 8, 6), dtype=np.uint8)[::2, :, :, ::2],
             np.asfortranarray(images_u8(3, seed=13))]
    for v in views:
        assert not v.flags.c_contiguous
        np.testing.assert_array_equal(eng.run(v), eng.run(np.ascontiguousarray(v)))


def test_non_contiguous_float_input(eng):
    big = images_f32(4, h=16, w=16, seed=14)
    views = [big[:, :, ::2, ::2], big[:, :, 4:12, 3:11], images_f32(3, seed=15)[:, ::-1],
             images_f32(2, h=8, w=8, seed=16).transpose(0, 1, 3, 2),
             np.asfortranarray(images_f32(2, seed=17))]
    for v in views:
        assert not v.flags.c_contiguous
        np.testing.assert_array_equal(eng.run(v), eng.run(np.ascontiguousarray(v)))


def test_float64_and_float16_match_float32(eng):
    x32 = images_f32(5, seed=18)
    np.testing.assert_array_equal(eng.run(x32.astype(np.float64)), eng.run(x32))
    x16 = x32.astype(np.float16)
    np.testing.assert_array_equal(eng.run(x16), eng.run(x16.astype(np.float32)))


def test_uint8_matches_its_normalized_float(eng):
    x = images_u8(4, seed=19)
    f = (x.astype(np.float32) / np.float32(255) - mf.MEAN) / mf.STD
    np.testing.assert_allclose(eng.run(x), eng.run(f.transpose(0, 3, 1, 2)), rtol=1e-4, atol=1e-4)


def test_input_is_not_modified(eng):
    x = images_u8(3, seed=20)
    f = images_f32(3, seed=20)
    x0, f0 = x.copy(), f.copy()
    eng.run(x), eng.run(f)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(f, f0)


def test_uint8_needs_an_input_op():
    rng = np.random.default_rng(21)
    e = load(to_bytes([mf.conv_fp(rng, 3, 8), mf.head(rng, 8, 4)]))
    with pytest.raises(ValueError, match="no input normalization"):
        e.run(images_u8(1))
    assert e.run(images_f32(1)).shape == (1, 4)


# ---------------------------------------------------------------------------------------------
# 4. ISA selection.
# ---------------------------------------------------------------------------------------------

def test_implementations_listed():
    impls = xengine.implementations()
    names = [i["name"] for i in impls]
    assert "generic" in names and len(set(names)) == len(names)
    assert all(isinstance(i["supported"], bool) and i["description"] for i in impls)
    assert next(i for i in impls if i["name"] == "generic")["supported"]


@pytest.fixture(scope="module")
def isa_inputs():
    return images_u8(5, seed=30), images_f32(3, h=16, w=16, seed=31)


@pytest.mark.parametrize("isa", SUPPORTED)
@pytest.mark.parametrize("threads", [1, 2])
def test_every_isa_gives_the_same_logits(isa, threads, isa_inputs, monkeypatch):
    monkeypatch.delenv("XNORNET_ISA", raising=False)
    ref = load(GOOD, isa="generic")
    e = load(GOOD, isa=isa, threads=threads)
    assert e.isa == isa and e.threads == threads
    for x in isa_inputs:
        np.testing.assert_allclose(e.run(x), ref.run(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", SUPPORTED)
def test_every_isa_on_odd_channel_counts(isa):
    """Channels not a multiple of 64 / 8 / 16, and k=1, 5, 7: tails of every kernel."""
    rng = np.random.default_rng(32)
    ops = [mf.input_op(), mf.conv_fp(rng, 3, 20, k=5, pad=2),
           mf.bconv(rng, 20, 20, k=1, pad=0, residual=RES_IDENTITY),
           mf.bconv(rng, 20, 70, k=7, pad=3), mf.bconv(rng, 70, 140, stride=2, residual=RES_DOWNSAMPLE),
           mf.head(rng, 140, 3)]
    data = to_bytes(ops)
    x = images_u8(3, 10, 6, seed=33)
    np.testing.assert_allclose(load(data, isa=isa).run(x), load(data, isa="generic").run(x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sse9", "neon?", "avx1024", "generic\0"])
def test_unknown_isa(name, monkeypatch):
    monkeypatch.delenv("XNORNET_ISA", raising=False)
    with pytest.raises(ValueError, match="unknown ISA") as info:
        load(GOOD, isa=name)
    assert not isinstance(info.value, ModelFileError)
    assert "generic" in str(info.value)  # lists what this build has
    assert "XNORNET_ISA" not in str(info.value)  # the name came from the argument


@pytest.mark.skipif(not UNSUPPORTED, reason="this CPU supports every implementation")
@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_isa(name, monkeypatch):
    with pytest.raises(ValueError, match="not supported"):
        load(GOOD, isa=name)
    monkeypatch.setenv("XNORNET_ISA", name)
    with pytest.raises(ValueError, match="not supported"):
        load(GOOD)


@pytest.mark.parametrize("isa", SUPPORTED)
def test_env_var_forces_the_isa(isa, monkeypatch):
    monkeypatch.setenv("XNORNET_ISA", isa)
    assert load(GOOD).isa == isa
    assert load(GOOD, isa="auto").isa == isa
    assert xengine.default_isa() == isa
    # An explicit isa wins over the environment.
    assert load(GOOD, isa="generic").isa == "generic"


def test_env_var_unknown_isa(monkeypatch):
    monkeypatch.setenv("XNORNET_ISA", "pentium4")
    with pytest.raises(ValueError, match=r"pentium4' \(from \$XNORNET_ISA\)"):
        load(GOOD)
    with pytest.raises(ValueError, match=r"pentium4' \(from \$XNORNET_ISA\)"):
        xengine.default_isa()
    assert load(GOOD, isa="generic").isa == "generic"


def test_default_isa_is_the_best_supported(monkeypatch):
    monkeypatch.delenv("XNORNET_ISA", raising=False)
    best = next(i["name"] for i in xengine.implementations() if i["supported"] and i["automatic"])
    assert load(GOOD).isa == best == xengine.default_isa()
    assert best != "amx"  # amx alone is opt-in
    monkeypatch.setenv("XNORNET_ISA", "")
    assert load(GOOD).isa == best == xengine.default_isa()
    assert [i["name"] for i in xengine.implementations() if not i["automatic"]] in ([], ["amx"])


def test_implementations_in_priority_order():
    names = [i["name"] for i in xengine.implementations()]
    # x86 builds have every kernel compiled in (usable or not); other builds only the portable one
    assert names in (["amx+avx512", "avx512", "amx", "avx2", "generic"], ["generic"])


def test_bad_file_error_wins_over_isa(monkeypatch):
    monkeypatch.setenv("XNORNET_ISA", "generic")
    with pytest.raises(ModelFileError, match="magic"):
        load(b"X" * 64, isa="sse9")


# ---------------------------------------------------------------------------------------------
# 5. One engine, several Python threads.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_concurrent_runs_match_serial(threads):
    e = load(GOOD, threads=threads)
    rng = np.random.default_rng(40 + threads)
    inputs = []
    for i, n in enumerate([1, 7, 2, 5, 1, 7, 3, 4]):
        if i % 2:
            inputs.append(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
        else:
            hw = 16 if i % 4 == 0 else 8
            inputs.append(rng.standard_normal((n, 3, hw, hw)).astype(np.float32))
    expected = [e.run(x) for x in inputs]

    def worker(t):
        order = np.random.default_rng(t).permutation(len(inputs))
        done = []
        for _ in range(3):
            for i in order:
                done.append((i, e.run(inputs[i])))
        return done

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [r for f in [pool.submit(worker, t) for t in range(4)] for r in f.result()]
    assert len(results) == 4 * 3 * len(inputs)
    for i, out in results:
        np.testing.assert_array_equal(out, expected[i])


def test_concurrent_predict_and_run_on_two_engines():
    a, b = load(GOOD, threads=2), load(mf.small_model(seed=2), threads=1)
    xs = [images_u8(n, seed=n) for n in (1, 7, 3)]
    want = [(a.run(x), b.predict(x)) for x in xs]

    def job(i):
        x = xs[i % 3]
        return i % 3, a.run(x), b.predict(x)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for k, ra, pb in pool.map(job, range(24)):
            np.testing.assert_array_equal(ra, want[k][0])
            np.testing.assert_array_equal(pb, want[k][1])


# ---------------------------------------------------------------------------------------------
# 6. threads argument.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [0, -1, -100, "x", "2", 1.5, 2.0, [2]])
def test_threads_validation(threads, tmp_path):
    with pytest.raises(ValueError, match="threads"):
        Engine.from_bytes(GOOD, threads=threads)
    path = tmp_path / "m.xnor"
    path.write_bytes(GOOD)
    with pytest.raises(ValueError, match="threads"):
        Engine.load(path, threads=threads)


@pytest.mark.parametrize("threads", [np.int64(2), np.int32(3), np.uint8(1)])
def test_threads_accepts_numpy_integers(threads):
    assert Engine.from_bytes(GOOD, threads=threads).threads == int(threads)


# A child forked after its parent ran an engine on several threads: GNU OpenMP's pool does not
# survive fork, so without the fork hook the child's first parallel run waits forever.
FORK_SCRIPT = """
import os, sys, warnings
import numpy as np
from xnornet.engine import Engine
path, parent_threads = sys.argv[1], int(sys.argv[2])
x = np.random.default_rng(0).integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
parent = Engine.load(path, threads=parent_threads)
want = parent.run(x)
pid = os.fork()
if pid == 0:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = Engine.load(path, threads=2)
    ok = np.array_equal(e.run(x), want) and np.array_equal(e.run(x[:1]), want[:1])
    # the parent's engine (and its cached workspaces) works here too, and in a grandchild
    ok = ok and np.array_equal(parent.run(x), want)
    grandchild = os.fork()
    if grandchild == 0:
        os._exit(0 if np.array_equal(parent.run(x), want) and np.array_equal(e.run(x), want) else 1)
    _, status = os.waitpid(grandchild, 0)
    ok = ok and os.waitstatus_to_exitcode(status) == 0
    warned = any("fork" in str(w.message) for w in caught)
    print(f"child threads={e.threads} warned={warned} same={ok}", flush=True)
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("parent_threads", [1, 2])
def test_forked_child_runs_and_does_not_hang(parent_threads, tmp_path):
    path = tmp_path / "m.xnor"
    path.write_bytes(GOOD)
    try:
        out = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(path), str(parent_threads)],
                             capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child's engine hung")
    assert out.returncode == 0, out.stdout + out.stderr
    if parent_threads > 1:  # the parent's pool is gone: one thread, and a warning that says why
        assert "child threads=1 warned=True same=True" in out.stdout, out.stdout
    else:  # no pool was started before the fork: the child keeps its threads
        assert "child threads=2 warned=False same=True" in out.stdout, out.stdout


@pytest.mark.parametrize("threads", [2**31, 2**40])
def test_threads_absurdly_large(threads):
    with pytest.raises(ValueError, match="threads"):
        Engine.from_bytes(GOOD, threads=threads)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_threads_is_reported(threads):
    e = Engine.from_bytes(GOOD, threads=threads)
    assert e.threads == threads
    assert f"threads={threads}" in repr(e)
    assert e.run(images_u8(3)).shape == (3, CLASSES)


def test_threads_default_is_all_cores():
    e = Engine.from_bytes(GOOD)
    assert e.threads >= 1
    assert Engine.from_bytes(GOOD, threads=None).threads == e.threads
    # OpenMP's default, decided when the runtime loads: all usable cores, or $OMP_NUM_THREADS.
    code = ("from xnornet.engine import Engine; from xnornet.assets import shipped_model; "
            "print(Engine.load(shipped_model()).threads)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(got[-1]) == len(os.sched_getaffinity(0))
    got = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "3"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert int(got[-1]) == 3
