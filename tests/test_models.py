"""The three models share one trunk; summary counts parameters, bits and MACs correctly."""
import pytest
import torch

from xnornet.layers import QuantConv2d
from xnornet.models import MODEL_KINDS, BiRealBlock, Downsample, TrunkConfig, XnorBlock, build_model
from xnornet.summary import format_summary, summarize

TINY = dict(widths=(8, 16), depths=(1, 2))


def _conv_shapes(model):
    return [(m.in_channels, m.out_channels, m.stride) for m in model.modules()
            if isinstance(m, torch.nn.Conv2d)]


def test_one_trunk_topology_for_all_models():
    shapes = {k: _conv_shapes(build_model(k, **TINY)) for k in MODEL_KINDS}
    assert shapes["fp32"] == shapes["xnor"] == shapes["bireal"]
    assert shapes["fp32"] == [(3, 8, (1, 1)), (8, 8, (1, 1)), (8, 16, (2, 2)), (16, 16, (1, 1))]


@pytest.mark.parametrize("kind", ["fp32", "baseline", "xnor", "bireal"])
@pytest.mark.parametrize("batch,size", [(1, 32), (3, 32), (2, 16)])
def test_forward_shapes(kind, batch, size):
    model = build_model(kind, **TINY).eval()
    assert model(torch.randn(batch, 3, size, size)).shape == (batch, 10)


def test_model_variants_have_their_features():
    xnor, bireal, fp = (build_model(k, **TINY) for k in ("xnor", "bireal", "fp32"))
    xconvs = [m for m in xnor.modules() if isinstance(m, QuantConv2d)]
    bconvs = [m for m in bireal.modules() if isinstance(m, QuantConv2d)]
    assert xconvs and all(c.is_binary and c.scale == "mean_abs" for c in xconvs)
    assert bconvs and all(c.is_binary and c.scale == "learnable" for c in bconvs)
    assert not any(isinstance(m, QuantConv2d) and m.is_binary for m in fp.modules())
    # first conv and classifier stay full precision everywhere
    for model in (xnor, bireal, fp):
        assert type(model.stem[0]) is torch.nn.Conv2d and isinstance(model.head[-1], torch.nn.Linear)
    assert all(isinstance(b, XnorBlock) for b in xnor.blocks)
    assert all(isinstance(b, BiRealBlock) for b in bireal.blocks)
    assert not any(isinstance(m, torch.nn.ReLU) for m in bireal.blocks.modules())


def test_bireal_shortcut_carries_real_values():
    block = BiRealBlock(8, 8, 1).eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        block.bn.weight.zero_()
        block.bn.bias.zero_()
    assert torch.allclose(block(x), x)  # conv branch silenced: the output is the shortcut


def test_downsample_pools_and_repeats_channels():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    y = Downsample(2, 4, 2)(x)
    assert y.shape == (1, 4, 2, 2)
    assert torch.equal(y[:, :2], y[:, 2:])
    assert y[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    with pytest.raises(ValueError, match="multiple"):
        Downsample(3, 4, 2)


def test_config_validation_and_alias():
    assert TrunkConfig(kind="baseline").kind == "fp32"
    with pytest.raises(ValueError, match="unknown model"):
        TrunkConfig(kind="resnet")
    with pytest.raises(ValueError, match="pair"):
        TrunkConfig(widths=(8, 16), depths=(1,))


def test_summary_counts_macs_params_and_bits():
    model = build_model("bireal", **TINY)
    rows = {r.name: r for r in summarize(model)}
    conv = rows["blocks.0.conv"]  # 8 -> 8, 3x3, 32x32 output
    assert conv.binary_macs == 32 * 32 * 8 * 8 * 9 and conv.fp_macs == 0 and conv.weight_bits == 1
    assert conv.params == 8 * 8 * 9 + 8  # kernel + alpha
    assert conv.memory_bytes == 8 * 8 * 9 / 8 + 4 * 8
    down = rows["blocks.1.conv"]  # 8 -> 16, stride 2: 16x16 output
    assert down.binary_macs == 16 * 16 * 16 * 8 * 9
    stem = rows["stem.0"]
    assert stem.fp_macs == 32 * 32 * 8 * 3 * 9 and stem.binary_macs == 0 and stem.weight_bits == 32
    assert sum(r.params for r in rows.values()) == sum(p.numel() for p in model.parameters())
    text = format_summary(model)
    assert "binary" in text and "smaller" in text


def test_summary_size_ratio_fp32_vs_binary():
    fp_text = format_summary(build_model("fp32"))
    bin_text = format_summary(build_model("bireal"))
    assert "-> 1.0x smaller" in fp_text
    ratio = float(bin_text.split("->")[1].split("x")[0])
    assert ratio > 20
