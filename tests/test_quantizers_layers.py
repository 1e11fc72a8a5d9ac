"""Binarization, straight-through estimators, binary conv scaling, latent-weight clipping."""
import pytest
import torch
import torch.nn.functional as F

from xnornet.layers import QuantConv2d, clip_latent_weights
from xnornet.quantizers import ApproxSign, SteSign, binarize, get_quantizer

GRID = torch.tensor([-2.0, -1.0001, -1.0, -0.75, -0.5, -1e-6, 0.0, 1e-6, 0.25, 0.5, 0.999, 1.0, 1.5])


def test_sign_of_zero_is_plus_one():
    assert binarize(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]
    for q in (SteSign(), ApproxSign()):
        out = q(GRID)
        assert set(out.unique().tolist()) == {-1.0, 1.0}
        assert out[GRID == 0].item() == 1.0
        assert torch.equal(out, torch.where(GRID >= 0, 1.0, -1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_binarize_keeps_dtype(dtype):
    assert binarize(torch.randn(5, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantizer", [SteSign, ApproxSign])
def test_output_is_exactly_plus_minus_one_while_training(quantizer, dtype):
    # the straight-through form adds (s - s.detach()) to sign(x): it must add exactly 0
    x = (torch.randn(4096) * 3).to(dtype).requires_grad_(True)
    out = quantizer()(x)
    assert out.dtype == dtype and out.requires_grad
    assert torch.equal(out.detach(), torch.where(x.detach() >= 0, 1.0, -1.0).to(dtype))


@pytest.mark.parametrize("kind", ["xnor", "bireal"])
def test_compiled_gradients_match_eager(kind):
    """torch.compile must pass gradients through binarization (on CUDA it once did not)."""
    from xnornet.models import build_model

    def grads(compiled):
        torch.manual_seed(0)
        model = build_model(kind, widths=(8, 16), depths=(1, 1))
        net = torch.compile(model) if compiled else model
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        F.cross_entropy(net(x), torch.arange(4)).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    eager, compiled = grads(False), grads(True)
    assert compiled["stem.0.weight"].abs().sum() > 0  # reached the layer below every binary conv
    for name, g in eager.items():
        assert torch.allclose(compiled[name], g, rtol=1e-3, atol=1e-5), name


def _grad(q, x):
    x = x.clone().requires_grad_(True)
    q(x).backward(torch.ones_like(x))
    return x.grad


def test_ste_sign_gradient_is_clipped_identity():
    expected = torch.tensor([1.0 if abs(v) <= 1 else 0.0 for v in GRID.tolist()])
    assert torch.equal(_grad(SteSign(), GRID), expected)


def test_approx_sign_gradient_is_bireal_polynomial_derivative():
    expected = torch.tensor([max(0.0, 2 - 2 * abs(v)) for v in GRID.tolist()])
    assert torch.allclose(_grad(ApproxSign(), GRID), expected, atol=1e-6)
    # upstream gradient is multiplied, not replaced
    x = torch.tensor([0.5], requires_grad=True)
    ApproxSign()(x).backward(torch.tensor([3.0]))
    assert x.grad.item() == pytest.approx(3.0 * (2 - 2 * 0.5))


def test_get_quantizer_by_name_and_errors():
    assert isinstance(get_quantizer("ste_sign"), SteSign)
    q = ApproxSign()
    assert get_quantizer(q) is q and get_quantizer(None) is None
    with pytest.raises(ValueError, match="unknown quantizer"):
        get_quantizer("nope")


def _binary_conv(scale, cin=5, cout=4, stride=1):
    torch.manual_seed(0)
    return QuantConv2d(cin, cout, 3, stride, 1, input_quantizer="ste_sign",
                       kernel_quantizer="ste_sign", scale=scale)


@pytest.mark.parametrize("stride", [1, 2])
def test_mean_abs_scaling_matches_xnor_formula(stride):
    conv = _binary_conv("mean_abs", stride=stride)
    x = torch.randn(2, 5, 7, 6)
    w = conv.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3))
    xb = torch.where(x >= 0, 1.0, -1.0)
    wb = torch.where(w >= 0, 1.0, -1.0)
    ref = F.conv2d(xb, wb, stride=stride, padding=1) * alpha.view(1, -1, 1, 1)
    assert torch.allclose(conv(x), ref, atol=1e-5)
    # alpha follows the latent weights: changing W changes the scale
    with torch.no_grad():
        conv.weight.mul_(2)
    assert torch.allclose(conv(x), 2 * ref, atol=1e-5)


def test_learnable_scale_is_trained_and_initialised_to_mean_abs():
    conv = _binary_conv("learnable")
    assert isinstance(conv.alpha, torch.nn.Parameter)
    assert torch.allclose(conv.alpha, conv.weight.detach().abs().mean(dim=(1, 2, 3)))
    with torch.no_grad():
        conv.alpha.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(1, 5, 6, 6)
    unscaled = F.conv2d(torch.where(x >= 0, 1.0, -1.0),
                        torch.where(conv.weight >= 0, 1.0, -1.0), padding=1)
    out = conv(x)
    assert torch.allclose(out, unscaled * torch.tensor([1.0, 2, 3, 4]).view(1, -1, 1, 1), atol=1e-5)
    out.sum().backward()
    assert conv.alpha.grad is not None and conv.alpha.grad.abs().sum() > 0
    assert conv.weight.grad is not None


def test_no_scale_and_full_precision_conv():
    conv = _binary_conv("none")
    x = torch.randn(1, 5, 4, 4)
    ref = F.conv2d(torch.where(x >= 0, 1.0, -1.0), torch.where(conv.weight >= 0, 1.0, -1.0), padding=1)
    assert torch.allclose(conv(x), ref)
    fp = QuantConv2d(5, 4, 3, padding=1)
    assert not fp.is_binary and torch.allclose(fp(x), F.conv2d(x, fp.weight, padding=1), atol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        QuantConv2d(5, 4, 3, scale="median")


def test_zero_padding_of_binary_input_contributes_zero():
    conv = QuantConv2d(1, 1, 3, padding=1, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    with torch.no_grad():
        conv.weight.fill_(0.5)  # all +1
    out = conv(torch.ones(1, 1, 3, 3))
    # corner sees 4 valid taps, edge 6, centre 9
    assert out[0, 0].tolist() == [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]


def test_clip_latent_weights_only_touches_binary_kernels():
    binary, fp = _binary_conv("learnable"), QuantConv2d(5, 4, 3)
    model = torch.nn.Sequential(binary, fp)
    with torch.no_grad():
        binary.weight.mul_(10)
        fp.weight.mul_(10)
        binary.alpha.fill_(5.0)
    fp_before = fp.weight.detach().clone()
    clip_latent_weights(model)
    assert binary.weight.abs().max() <= 1.0 and binary.weight.abs().max() == 1.0
    assert torch.equal(fp.weight, fp_before)
    assert torch.all(binary.alpha == 5.0)
