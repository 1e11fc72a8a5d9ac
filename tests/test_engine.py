"""The native engine against the numpy reference (tests/reference.py), op by op and for fused
chains, on awkward shapes and every ISA this CPU supports; the file round trip. Torch-free, so
the sanitizer build runs it too (make test-asan)."""
import functools

import numpy as np
import pytest

import reference
from xnornet import modelfile as mf
from xnornet.engine import Engine, implementations

ISAS = [i["name"] for i in implementations() if i["supported"]]
RNG = np.random.default_rng(0)


def bconv_op(cin, cout, stride=1, residual=mf.RES_NONE, relu=False, k=3, pad=1, rng=RNG, in_scale="signed"):
    bits = mf.pack_bits(rng.random((cout, k, k, cin)) < 0.5)
    # in_scale of both signs (the comparison direction flips with it); "positive" and "unit"
    # (Bi-Real's export) scales give the engine's sign thresholds (Prepared::sign_from)
    in_s = {"signed": rng.choice([-1.0, 1.0], cin) * rng.uniform(0.5, 2, cin),
            "positive": rng.uniform(0.5, 2, cin), "unit": np.ones(cin)}[in_scale]
    return mf.Op(mf.BCONV, [cin, cout, k, stride, pad, int(relu), residual],
                 [in_s.astype(np.float32), rng.normal(0, 0.3, cin).astype(np.float32), bits,
                  rng.uniform(0.01, 0.1, cout).astype(np.float32),
                  rng.normal(0, 1, cout).astype(np.float32)])


def conv_fp_op(cin, cout, stride=1, residual=mf.RES_NONE, relu=False, rng=RNG, k=3):
    return mf.Op(mf.CONV_FP, [cin, cout, k, stride, k // 2, int(relu), residual],
                 [rng.normal(0, 0.3, (cout, k, k, cin)).astype(np.float32),
                  rng.uniform(0.5, 1.5, cout).astype(np.float32),
                  rng.normal(0, 0.5, cout).astype(np.float32)])


def head_op(cin, classes, rng=RNG):
    names = "\n".join(f"c{i}" for i in range(classes)).encode()
    return mf.Op(mf.HEAD, [cin, classes],
                 [rng.uniform(0.5, 1.5, cin).astype(np.float32), rng.normal(0, 0.5, cin).astype(np.float32),
                  rng.normal(0, 0.3, (classes, cin)).astype(np.float32),
                  rng.normal(0, 0.1, classes).astype(np.float32), np.frombuffer(names, np.uint8)])


def check(ops, x, isa, threads, atol=2e-4):
    engine = Engine.from_bytes(mf.to_bytes(ops), threads=threads, isa=isa)
    got = engine.run(x)
    want = reference.run_ops(ops, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)


BCONV_CASES = [  # cin, cout, h, w, stride, residual
    (3, 8, 5, 7, 1, mf.RES_NONE),
    (64, 64, 8, 8, 1, mf.RES_IDENTITY),
    (65, 13, 6, 9, 2, mf.RES_NONE),
    (100, 100, 7, 5, 1, mf.RES_IDENTITY),
    (64, 128, 8, 6, 2, mf.RES_DOWNSAMPLE),
    (130, 260, 4, 4, 2, mf.RES_DOWNSAMPLE),
    (256, 256, 3, 3, 1, mf.RES_IDENTITY),
    (1, 1, 1, 1, 1, mf.RES_NONE),
    (64, 72, 2, 11, 1, mf.RES_NONE),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", BCONV_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("batch,threads", [(1, 1), (3, 2), (1, 2)])
def test_bconv_matches_reference(isa, case, batch, threads):
    cin, cout, h, w, stride, residual = case
    rng = np.random.default_rng(hash(case) % 2**32)
    op = bconv_op(cin, cout, stride, residual, relu=bool(cin % 2), rng=rng)
    x = rng.normal(0, 1, (batch, cin, h, w)).astype(np.float32)
    check([op], x, isa, threads)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k,pad,stride", [(1, 0, 1), (1, 0, 2), (5, 2, 1), (5, 2, 2), (3, 0, 1), (2, 1, 2)])
@pytest.mark.parametrize("batch,threads", [(1, 3), (2, 1)])
def test_bconv_other_kernel_sizes_and_row_blocks(isa, k, pad, stride, batch, threads):
    """Kernel sizes and paddings the trunk does not use, and (batch 1, 3 threads) maps split into
    uneven row blocks: where kernels that take many rows per call (amx)
    place their tiles (e.g. 7 output rows -> 3 + 3 + 1)."""
    rng = np.random.default_rng(k * 100 + pad * 10 + stride)
    op = bconv_op(70, 24, stride, relu=True, k=k, pad=pad, rng=rng)
    x = rng.normal(0, 1, (batch, 70, 13, 9)).astype(np.float32)
    check([op], x, isa, threads)
    # The same op packing its output for a following binary conv (no float output kept).
    chain = [op, bconv_op(24, 40, 1, k=k, pad=pad, rng=rng)]
    check(chain, x, isa, threads)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cin,cout,stride,residual", [
    (3, 64, 1, mf.RES_NONE), (3, 13, 2, mf.RES_NONE), (16, 16, 1, mf.RES_IDENTITY),
    (8, 16, 2, mf.RES_DOWNSAMPLE), (5, 32, 1, mf.RES_NONE)])
def test_conv_fp_matches_reference(isa, cin, cout, stride, residual):
    x = RNG.normal(0, 1, (3, cin, 10, 6)).astype(np.float32)
    check([conv_fp_op(cin, cout, stride, residual, relu=True)], x, isa, threads=2)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cin,cout,stride,k", [
    (3, 64, 1, 3), (3, 128, 2, 3), (5, 80, 1, 3), (16, 64, 2, 3), (3, 64, 1, 5), (7, 64, 2, 5)])
@pytest.mark.parametrize("width", [11, 12, 15, 16])
def test_conv_fp_interior_and_border_pixels_round_alike(isa, cin, cout, stride, k, width):
    """A float conv reads blocks of interior pixels straight from the map and gathers the taps
    of border pixels (zeros outside): both must sum in the same order. The same conv with pad
    k//2 on x and with pad 0 on x padded by k//2 zero pixels gives the same floats bit for bit,
    though the second computes every pixel as an interior one. The widths put the last block of
    4 pixels just inside or just past the right edge for both strides."""
    op = conv_fp_op(cin, cout, stride, k=k)
    p = k // 2
    unpadded = mf.Op(op.kind, op.params[:4] + [0] + op.params[5:], op.tensors)
    x = RNG.normal(0, 1, (3, cin, 14, width)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    got = Engine.from_bytes(mf.to_bytes([op]), threads=1, isa=isa).run(x)
    want = Engine.from_bytes(mf.to_bytes([unpadded]), threads=1, isa=isa).run(padded)
    np.testing.assert_array_equal(got, want)
    check([op], x, isa, threads=1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("width", [12, 13])
def test_float_conv_packs_like_the_next_layer_would(isa, width):
    """A float conv followed by a binary conv may pack the sign bits itself, from registers: the
    bits must be those of packing its float output, `y * s + b >= 0` rounded as multiply, then
    add. The next layer's thresholds are set to tie exactly with one output value per channel
    (b = -(y * s) in float32), where a fused multiply-add would flip the sign."""
    conv = conv_fp_op(3, 64)
    x = RNG.normal(0, 1, (2, 3, 8, width)).astype(np.float32)
    y = Engine.from_bytes(mf.to_bytes([conv]), isa=isa).run(x)
    binary = bconv_op(64, 64)
    s = binary.tensors[0]
    pixels = RNG.integers(0, 8 * width, 64)
    ties = y[0].reshape(64, -1)[np.arange(64), pixels]
    binary.tensors[1] = (-(ties * s)).astype(np.float32)
    got = Engine.from_bytes(mf.to_bytes([conv, binary]), isa=isa).run(x)
    want = Engine.from_bytes(mf.to_bytes([binary]), isa=isa).run(y)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(1, 1), (5, 2), (2, 4)])
def test_fused_chain_matches_reference(isa, batch, threads):
    """CONV_FP -> BCONV (no residual: bits only) -> BCONV identity -> BCONV downsample -> HEAD:
    every producer packs for the next binary conv in its epilogue."""
    ops = [conv_fp_op(3, 64), bconv_op(64, 64), bconv_op(64, 64, residual=mf.RES_IDENTITY),
           bconv_op(64, 128, 2, mf.RES_DOWNSAMPLE), bconv_op(128, 100, relu=True), head_op(100, 7)]
    x = RNG.normal(0, 1, (batch, 3, 12, 10)).astype(np.float32)
    check(ops, x, isa, threads, atol=1e-3)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cin,cout", [(16, 48), (24, 48), (72, 144), (64, 128), (128, 256), (256, 512), (64, 192)])
def test_downsample_shortcut_channel_counts(isa, cin, cout):
    """The average-pooled, channel-repeated shortcut: 16-channel chunks where cin allows, the
    general loop for the rest; repeats of 2 and 3; the tile kernels' shapes compiled with
    constant channel counts (64, 128 and 256 -> twice as many) and the same count's runtime
    path (64 -> 192)."""
    ops = [conv_fp_op(3, cin), bconv_op(cin, cin, residual=mf.RES_IDENTITY),
           bconv_op(cin, cout, 2, mf.RES_DOWNSAMPLE), head_op(cout, 5)]
    x = RNG.normal(0, 1, (3, 3, 10, 6)).astype(np.float32)
    check(ops, x, isa, 2, atol=1e-3)
    # followed by a binary conv: the fused epilogue that also packs its bits (tile kernels)
    check(ops[:3] + [bconv_op(cout, 16), head_op(16, 5)], x, isa, 2, atol=1e-3)


def float32_bconv(op, x):
    """One binary conv the way PyTorch's float32 eval model rounds it: the +-1 dot product
    (exact), then (dot * scale + bias) + shortcut, each step rounded to float32."""
    in_s, in_b, bits, scale, bias = op.tensors
    cin, cout, k, stride, pad, relu, residual = op.params[:7]
    b = np.where(x * in_s[None, :, None, None] + in_b[None, :, None, None] >= 0, 1.0, -1.0)
    dot = reference.conv(b, np.where(mf.unpack_bits(bits, cin), 1.0, -1.0), stride, pad).astype(np.float32)
    y = dot * scale[None, :, None, None] + bias[None, :, None, None]
    if residual == mf.RES_IDENTITY:
        y = y + x
    elif residual == mf.RES_DOWNSAMPLE:  # the window's sum in row order, then / stride^2
        n, c, h, w = x.shape
        win = x.reshape(n, c, h // stride, stride, w // stride, stride)
        total = np.zeros((n, c, h // stride, w // stride), np.float32)
        for dy in range(stride):
            for dx in range(stride):
                total = total + win[:, :, :, dy, :, dx]
        y = y + np.tile(total * np.float32(1 / stride**2), (1, cout // c, 1, 1))
    return np.maximum(y, np.float32(0)) if relu else y


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(1, 2), (3, 2)])
@pytest.mark.parametrize("cin,cout,stride,residual,relu", [
    (64, 64, 1, mf.RES_IDENTITY, False), (100, 100, 1, mf.RES_IDENTITY, True),
    (64, 128, 2, mf.RES_DOWNSAMPLE, False), (24, 72, 2, mf.RES_DOWNSAMPLE, True)])
def test_bconv_floats_are_bitwise_pytorchs(isa, batch, threads, cin, cout, stride, residual, relu):
    """Not just close: the same float32 roundings as the PyTorch model, so that no activation near
    a threshold flips. Covers the identity shortcut added in place and the pooled one."""
    op = bconv_op(cin, cout, stride, residual, relu)
    x = RNG.normal(0, 1, (batch, cin, 6, 10)).astype(np.float32)
    got = Engine.from_bytes(mf.to_bytes([op]), threads=threads, isa=isa).run(x)
    np.testing.assert_array_equal(got, float32_bconv(op, x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(1, 2), (3, 2), (2, 1)])
@pytest.mark.parametrize("first_residual,relu", [
    (mf.RES_IDENTITY, False), (mf.RES_NONE, True), (mf.RES_DOWNSAMPLE, False)])
def test_downsampling_chains_are_bitwise_in_both_run_modes(isa, batch, threads, first_residual, relu):
    """Image-major runs (batch >= threads: one thread per image, rows in order) and row-major
    runs (batch 1 on 2 threads: rows split between threads) must both give PyTorch's float32 bit
    for bit through pooled shortcuts: after a first layer of each kind, two downsampling layers
    in a row (the pooled shortcut reads the float map of a layer whose rows other threads wrote).
    Also the test that any future fusion of the pooling into the previous layer must pass."""
    cin, stride = (32, 2) if first_residual == mf.RES_DOWNSAMPLE else (64, 1)
    ops = [bconv_op(cin, 64, stride, first_residual, relu),
           bconv_op(64, 128, 2, mf.RES_DOWNSAMPLE), bconv_op(128, 256, 2, mf.RES_DOWNSAMPLE, relu)]
    x = RNG.normal(0, 1, (batch, cin, 8 * stride, 16)).astype(np.float32)
    assert_chain_is_float32s(ops, x, threads, isa)


def assert_chain_is_float32s(ops, x, threads, isa):
    """The engine's output of binary conv layers `ops` on x, bit for bit float32_bconv's."""
    want = x
    for op in ops:
        want = float32_bconv(op, want)
    got = Engine.from_bytes(mf.to_bytes(ops), threads=threads, isa=isa).run(x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(1, 2), (3, 2), (8, 1)])
@pytest.mark.parametrize("in_scale", ["positive", "unit"])
def test_sign_thresholds_pack_like_the_multiply_add(isa, batch, threads, in_scale):
    """With every input scale of the next layer positive, the tile kernels' fused epilogues pack
    its sign as y >= t (a threshold per channel found once, Prepared::sign_from) instead of
    y * s + b >= 0: bit for bit the same floats as PyTorch's float32 through identity and
    downsampling layers, in both run modes."""
    rng = np.random.default_rng([batch, threads, len(in_scale)])
    ops = [bconv_op(64, 64, 1, mf.RES_IDENTITY, rng=rng, in_scale=in_scale),
           bconv_op(64, 128, 2, mf.RES_DOWNSAMPLE, rng=rng, in_scale=in_scale),
           bconv_op(128, 128, 1, mf.RES_IDENTITY, rng=rng, in_scale=in_scale),
           bconv_op(128, 48, 1, rng=rng, in_scale=in_scale)]
    assert_chain_is_float32s(ops, rng.normal(0, 1, (batch, 64, 8, 12)).astype(np.float32), threads, isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("first", ["identity", "downsample"])
@pytest.mark.parametrize("in_scale", ["positive", "unit"])
def test_sign_exactly_at_the_threshold(isa, first, in_scale):
    """The second layer's input biases set from the first layer's output so that y * s + b is
    exactly 0 (sign +) on some channels and one float below 0 (sign -) on others, at an interior
    pixel (the tile kernels' interior run) and at a border one: a threshold one float off flips
    those bits (surely with unit scales, where every y has its own product) and the output
    around the pixel changes. The second layer has an identity shortcut, so the first writes its
    float output and packs in the fused epilogue."""
    rng = np.random.default_rng(len(first) + len(in_scale))
    a = (bconv_op(64, 64, 1, mf.RES_IDENTITY, rng=rng) if first == "identity"
         else bconv_op(64, 128, 2, mf.RES_DOWNSAMPLE, rng=rng))
    x = rng.normal(0, 1, (3, 64, 8, 8)).astype(np.float32)
    y = float32_bconv(a, x)
    c = a.params[1]
    b = bconv_op(c, c, 1, mf.RES_IDENTITY, rng=rng, in_scale=in_scale)
    in_s, in_b = b.tensors[0], b.tensors[1].copy()
    groups = np.array_split(rng.permutation(c), 4)
    for (yy, xx), at, below in (((2, 1), groups[0], groups[1]), ((0, 0), groups[2], groups[3])):
        p = (y[1, :, yy, xx] * in_s).astype(np.float32)  # the products at one pixel of image 1
        ok = (np.abs(p) >= 2.0**-19) & (np.abs(p) <= 2.0**19)
        at, below = at[ok[at]], below[ok[below]]
        in_b[at] = -p[at]  # p + b == 0: +
        in_b[below] = np.nextafter(-p[below], np.float32(-np.inf))  # one float below 0: -
        assert np.all(p[at] + in_b[at] == 0) and np.all(p[below] + in_b[below] < 0)
    b.tensors[1] = in_b
    got = Engine.from_bytes(mf.to_bytes([a, b]), threads=1, isa=isa).run(x)
    np.testing.assert_array_equal(got, float32_bconv(b, y))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(1, 2), (3, 2), (5, 1)])
@pytest.mark.parametrize("k,cin,h,w", [(5, 64, 5, 6), (7, 128, 9, 8), (1, 64, 4, 5), (5, 256, 8, 41),
                                       (5, 256, 50, 1), (3, 192, 1, 7)])
def test_in_place_chains_of_other_kernel_sizes_are_bitwise(isa, batch, threads, k, cin, h, w):
    """Identity layers (pad k // 2) back to back, bit for bit PyTorch's float32: the fused
    in-place epilogue's interior runs (which rows and columns are interior depends on k and pad),
    the tile path's narrower phase images (stride 1 leaves the right padding out), pixel-tile
    groups that start in a row's dropped columns (8x41, 50x1 with 256 channels), a one-row map."""
    data, x, want = _identity_chain(k, cin, h, w, batch)
    got = Engine.from_bytes(data, threads=threads, isa=isa).run(x)
    np.testing.assert_array_equal(got, want)


@functools.lru_cache(maxsize=None)
def _identity_chain(k, cin, h, w, batch):
    """(model bytes, input, float32 reference) of three identity layers: the reference is the
    slow part, computed once per shape for all ISAs and thread counts."""
    rng = np.random.default_rng([k, cin, h, w, batch])
    ops = [bconv_op(cin, cin, residual=mf.RES_IDENTITY, k=k, pad=k // 2, rng=rng) for _ in range(3)]
    x = rng.normal(0, 1, (batch, cin, h, w)).astype(np.float32)
    want = x
    for op in ops:
        want = float32_bconv(op, want)
    return mf.to_bytes(ops), x, want


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(5, 1), (7, 2), (1, 1), (1, 2)])
@pytest.mark.parametrize("h,w,cout", [(32, 32, 128), (32, 16, 128), (12, 20, 128), (16, 16, 256)])
def test_downsampling_over_its_input_is_bitwise(isa, batch, threads, h, w, cout):
    """The tile kernels write a downsampling layer's output over its input map where their pixel
    order allows (cout = 2 * cin: 32x32 inputs one image per phase row, 32x16 and 12x20 two,
    their pixels interleaved, the first with a tile per output row, the second with packed tiles;
    each image in a slot of its own); the next identity layer
    then reads it there. With cout = 4 * cin and in the other run modes the output goes to the
    other buffer. Bit for bit PyTorch's float32 after a first identity layer (which wrote the
    input map in place) and two more layers."""
    data, x, want = _downsampling_chain(h, w, cout, batch)
    got = Engine.from_bytes(data, threads=threads, isa=isa).run(x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(5, 1), (3, 2), (1, 2)])
@pytest.mark.parametrize("cin,cout,stride,k,h,w", [
    (32, 64, 2, 3, 12, 12), (96, 192, 2, 3, 8, 8), (64, 192, 3, 3, 12, 9), (64, 128, 2, 1, 8, 8),
    (64, 128, 2, 5, 10, 10), (64, 128, 2, 7, 14, 14)])
def test_downsampling_over_its_input_other_shapes_is_bitwise(isa, batch, threads, cin, cout, stride, k, h, w):
    """Output over input beyond the trunk's shapes: the runtime-width pooled windows (cin 32, 96),
    stride 3 with cout = 3 * cin, kernels of 1, 5 and 7 (pad k // 2); then a binary conv (so the
    fused epilogue runs). Bit for bit PyTorch's float32 in every run mode."""
    rng = np.random.default_rng([cin, cout, stride, k, h, w, batch])
    ops = [bconv_op(cin, cin, residual=mf.RES_IDENTITY, rng=rng),
           bconv_op(cin, cout, stride, mf.RES_DOWNSAMPLE, k=k, pad=k // 2, rng=rng), bconv_op(cout, 64, rng=rng)]
    x = rng.normal(0, 1, (batch, cin, h, w)).astype(np.float32)
    want = x
    for op in ops:
        want = float32_bconv(op, want)
    got = Engine.from_bytes(mf.to_bytes(ops), threads=threads, isa=isa).run(x)
    np.testing.assert_array_equal(got, want)


@functools.lru_cache(maxsize=None)
def _downsampling_chain(h, w, cout, batch):
    rng = np.random.default_rng([h, w, cout, batch])
    ops = [bconv_op(64, 64, residual=mf.RES_IDENTITY, rng=rng), bconv_op(64, cout, 2, mf.RES_DOWNSAMPLE, rng=rng),
           bconv_op(cout, cout, residual=mf.RES_IDENTITY, rng=rng), bconv_op(cout, 64, rng=rng)]
    x = rng.normal(0, 1, (batch, 64, h, w)).astype(np.float32)
    want = x
    for op in ops:
        want = float32_bconv(op, want)
    return mf.to_bytes(ops), x, want


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cin", [512, 576])
def test_downsampling_with_wide_inputs_is_bitwise(isa, cin):
    """The fused downsampling epilogue holds the pooled windows of every input channel at once,
    up to 512; wider inputs take the general path. Both bit for bit PyTorch's float32."""
    ops = [bconv_op(cin, cin, 2, mf.RES_DOWNSAMPLE), bconv_op(cin, cin, residual=mf.RES_IDENTITY)]
    x = RNG.normal(0, 1, (3, cin, 6, 6)).astype(np.float32)
    got = Engine.from_bytes(mf.to_bytes(ops), threads=1, isa=isa).run(x)
    np.testing.assert_array_equal(got, float32_bconv(ops[1], float32_bconv(ops[0], x)))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(1, 2), (3, 2)])
def test_chain_of_in_place_and_bits_only_layers(isa, batch, threads):
    """Identity layers back to back (each writes over its input), one whose output only feeds a
    binary conv's bits (no float output), and one more identity layer after it."""
    ops = [conv_fp_op(3, 64), bconv_op(64, 64, residual=mf.RES_IDENTITY),
           bconv_op(64, 64, residual=mf.RES_IDENTITY), bconv_op(64, 64),
           bconv_op(64, 64, residual=mf.RES_IDENTITY), head_op(64, 5)]
    x = RNG.normal(0, 1, (batch, 3, 9, 7)).astype(np.float32)
    check(ops, x, isa, threads, atol=1e-3)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(7, 1), (9, 2), (6, 2), (16, 3), (5, 4)])
def test_image_groups_are_bitwise_one_image_runs(isa, batch, threads):
    """Image-major batches go through the graph in groups of images (the tile kernels take a
    group's images in one call per layer, a group of pixel tiles spanning images, and the
    256-channel layers on tiles too): the logits must be bit for bit those of one-image runs.
    Groups of 4, 3 and 2 (16 images on 3 threads, 5 on 4), ragged last groups (7 = 4 + 3,
    9 = 4 + 4 + 1), 16-output blocks not in pairs (48, 144),
    stride 2, a 256-channel layer after a 144-channel one."""
    ops = [conv_fp_op(3, 64), bconv_op(64, 64, residual=mf.RES_IDENTITY), bconv_op(64, 48, relu=True),
           bconv_op(48, 144, 2, mf.RES_DOWNSAMPLE), bconv_op(144, 256),
           bconv_op(256, 256, residual=mf.RES_IDENTITY), head_op(256, 7)]
    x = RNG.normal(0, 1, (batch, 3, 12, 10)).astype(np.float32)
    got = batch_matches_one_image_runs(ops, x, threads, isa)
    np.testing.assert_allclose(got, reference.run_ops(ops, x), rtol=1e-4, atol=1e-3)


def batch_matches_one_image_runs(ops, x, threads, isa):
    """The batch's outputs, checked bit for bit against runs of one image each."""
    engine = Engine.from_bytes(mf.to_bytes(ops), threads=threads, isa=isa)
    got = engine.run(x)
    np.testing.assert_array_equal(got, np.concatenate([engine.run(x[i:i + 1]) for i in range(len(x))]))
    return got


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,threads", [(16, 1), (13, 1), (9, 1), (32, 2), (24, 2), (7, 1)])
@pytest.mark.parametrize("first", ["float", "binary"])
def test_late_layers_on_larger_groups_are_bitwise_one_image_runs(isa, batch, threads, first):
    """Image-major batches large enough run the late layers (input at most a quarter of the
    largest map) on groups of twice as many images, the layers before them on the group's parts
    one after another: whole groups (16 = 8 + 8; 32 on 2 threads, two groups of 8 each), ragged
    ones (13 = 8 + 5: parts 4 + 4 and 4 + 1; 9 = 8 + 1), none where the doubled groups would load
    the threads unevenly (24 on 2) or the batch is too small (7); a float first conv, or a binary
    one (the engine packs each part's input). Logits bit for bit those of one-image runs."""
    stem = conv_fp_op(3, 64) if first == "float" else bconv_op(3, 64)
    ops = [stem, bconv_op(64, 64, residual=mf.RES_IDENTITY),
           bconv_op(64, 128, 2, mf.RES_DOWNSAMPLE), bconv_op(128, 256, 2, mf.RES_DOWNSAMPLE),
           bconv_op(256, 256, residual=mf.RES_IDENTITY), head_op(256, 7)]
    x = RNG.normal(0, 1, (batch, 3, 16, 16)).astype(np.float32)
    got = batch_matches_one_image_runs(ops, x, threads, isa)
    np.testing.assert_allclose(got, reference.run_ops(ops, x), rtol=1e-4, atol=1e-3)
    batch_matches_one_image_runs(ops[:-1], x, threads, isa)  # no head: the last map, from every slot


@pytest.mark.parametrize("isa", ISAS)
def test_plan_reports_groups_and_outputs_over_input(isa):
    """Engine.plan says how a batch runs; here it checks that the speed features are on where
    they should be (results cannot show it): the tile kernels write the downsampling layers
    (cout = 2 cin) over their inputs and run the late layers on groups of 8 (16 images, 1
    thread) with as few pixel tiles as their layouts allow (16x16 outputs a tile a row, not 17
    per 16 rows; two 8x8 maps interleaved a tile a row, not 9 per 8 rows; 4x4 maps packed, 3
    tiles per two images, not 4; three images a call: one a phase row where two would take more
    tiles); the other kernels take one image per call, compute no tiles
    and write only identity layers in place; batch 1 on 2 threads shares each layer's rows (0
    images per call)."""
    ops = [conv_fp_op(3, 64), bconv_op(64, 64, residual=mf.RES_IDENTITY),
           bconv_op(64, 128, 2, mf.RES_DOWNSAMPLE), bconv_op(128, 256, 2, mf.RES_DOWNSAMPLE),
           bconv_op(256, 256, residual=mf.RES_IDENTITY), head_op(256, 7)]
    data = mf.to_bytes(ops)
    plan = Engine.from_bytes(data, threads=1, isa=isa).plan(16, 16, 16)
    calls = [s["images_per_call"] for s in plan]
    over = [s["over_input"] for s in plan]
    tiles = [s["pixel_tiles"] for s in plan]
    if isa.startswith("amx"):
        assert calls == [4, 4, 4, 4, 8, 8] and over == [False, True, True, True, True, False]
        assert tiles == [0, 4 * 16, 2 * 8, 2 * 3, 4 * 3, 0]
        # three images a call: one image a phase row where two would take more tiles in all (8x8:
        # 3 x 5 packed, not 2 x 8 row-aligned; 4x4: 3 x 2, as many as 2 x 3)
        odd = Engine.from_bytes(data, threads=1, isa=isa).plan(3, 16, 16)
        assert [s["images_per_call"] for s in odd] == [3] * 6
        assert [s["pixel_tiles"] for s in odd] == [0, 3 * 16, 3 * 5, 3 * 2, 3 * 2, 0]
    else:
        assert calls == [1] * 6 and over == [False, True, False, False, True, False]
        assert tiles == [0] * 6
    rows = Engine.from_bytes(data, threads=2, isa=isa).plan(1, 16, 16)
    assert [s["images_per_call"] for s in rows] == [0] * 6
    assert [s["over_input"] for s in rows] == [False, True, False, False, True, False]
    assert [s["pixel_tiles"] for s in rows] == [0] * 6
    with pytest.raises(ValueError, match="batch"):
        Engine.from_bytes(data, threads=1, isa=isa).plan(0)
    with pytest.raises(ValueError, match="does not divide evenly"):
        Engine.from_bytes(data, threads=1, isa=isa).plan(1, 6, 6)


def test_uint8_input_is_normalized_like_the_reference():
    mean, std = np.array([0.4, 0.5, 0.6], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    ops = [mf.Op(mf.INPUT, [8, 8, 3], [mean, std]), conv_fp_op(3, 64), bconv_op(64, 64), head_op(64, 10)]
    images = RNG.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    x = ((images.transpose(0, 3, 1, 2) / np.float32(255) - mean[:, None, None]) / std[:, None, None])
    engine = Engine.from_bytes(mf.to_bytes(ops))
    np.testing.assert_allclose(engine.run(images), reference.run_ops(ops, x.astype(np.float32)),
                               rtol=1e-4, atol=2e-4)
    assert engine.class_names == [f"c{i}" for i in range(10)]
    # bit for bit the float32 normalization, for every byte value in every channel (no binary
    # conv in between, whose signs would hide a last-bit difference)
    engine = Engine.from_bytes(mf.to_bytes([ops[0], ops[1], head_op(64, 10)]))
    every = np.stack([(np.arange(256) + 85 * c) % 256 for c in range(3)], -1).reshape(4, 8, 8, 3)
    every = every.astype(np.uint8)
    x = (every.transpose(0, 3, 1, 2) / np.float32(255) - mean[:, None, None]) / std[:, None, None]
    assert x.dtype == np.float32 and all(len(np.unique(every[..., c])) == 256 for c in range(3))
    np.testing.assert_array_equal(engine.run(every), engine.run(np.ascontiguousarray(x)))


def test_pack_bits_roundtrip_and_layout():
    signs = RNG.random((3, 5, 130)) < 0.5
    words = mf.pack_bits(signs)
    assert words.shape == (3, 5, 3) and words.dtype == np.uint64
    assert np.array_equal(mf.unpack_bits(words, 130), signs)
    one = np.zeros(70, bool)
    one[[0, 63, 64, 69]] = True
    assert mf.pack_bits(one).tolist() == [1 | (1 << 63), 1 | (1 << 5)]


def test_model_file_roundtrip():
    ops = [conv_fp_op(3, 16), bconv_op(16, 8), head_op(8, 3)]
    back = mf.from_bytes(mf.to_bytes(ops))
    assert [(o.kind, o.params) for o in back] == [(o.kind, o.params) for o in ops]
    for a, b in zip(ops, back):
        for ta, tb in zip(a.tensors, b.tensors):
            assert np.array_equal(ta, tb)
