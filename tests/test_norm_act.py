"""In-place ABN computes BatchNorm + activation exactly, with less memory for backward."""
import pytest
import torch
import torch.nn.functional as F

from tresnet_ft import create_model
from tresnet_ft.models.layers import BlurPool2d, ShortcutAvgPool2d
from tresnet_ft.models.memory import saved_activation_bytes
from tresnet_ft.models.norm_act import BatchNormAct2d, InPlaceABN


def _reference(x, layer, training):
    """nn.BatchNorm2d followed by the activation: the textbook definition."""
    bn = torch.nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    bn.load_state_dict({k: v for k, v in layer.state_dict().items()})
    bn.train(training)
    y = bn(x)
    return (F.leaky_relu(y, layer.slope) if layer.activation == "leaky_relu" else y), bn


def _pair(activation, weight_low=0.5):
    torch.manual_seed(0)
    layer = InPlaceABN(6, activation=activation, slope=0.01)
    with torch.no_grad():
        layer.weight.uniform_(weight_low, 1.5).mul_(torch.tensor([1, -1, 1, -1, 1, 1.0]))
        layer.bias.normal_()
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
    return layer


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation", ["leaky_relu", "identity"])
@pytest.mark.parametrize("cls", [InPlaceABN, BatchNormAct2d])
def test_values_and_gradients_match_batchnorm(cls, activation, training, channels_last):
    layer = _pair(activation)
    layer = cls(6, activation=activation, slope=0.01).train(training) if cls is BatchNormAct2d else layer.train(training)
    if cls is BatchNormAct2d:
        layer.load_state_dict(_pair(activation).state_dict())
    x = (torch.randn(4, 6, 5, 7) * 3 + 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, bn = _reference(x_ref, layer, training)
    got = layer(x_ours)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.weight.grad, bn.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.bias.grad, bn.bias.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    assert int(layer.num_batches_tracked) == int(bn.num_batches_tracked)


@pytest.mark.parametrize("activation", ["leaky_relu", "identity"])
def test_zero_weight_falls_back_to_keeping_the_input(activation):
    layer = _pair(activation)
    with torch.no_grad():
        layer.weight[2] = 0.0  # cannot be inverted from the output
    x_ref, x_ours = torch.randn(3, 6, 4, 4).requires_grad_(), None
    x_ours = x_ref.detach().clone().requires_grad_()
    expected, bn = _reference(x_ref, layer, True)
    got = layer(x_ours)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.weight.grad, bn.weight.grad, atol=1e-4, rtol=1e-4)


def test_keeps_only_its_output_for_backward():
    layer = _pair("leaky_relu")
    x = torch.randn(4, 6, 8, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == y.data_ptr()


def test_autocast_bf16_keeps_statistics_in_float32():
    layer = _pair("leaky_relu")
    x = torch.randn(4, 6, 8, 8) * 5 + 3
    expected, _ = _reference(x, _pair("leaky_relu"), True)
    x16 = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x16)
    assert y.dtype == torch.bfloat16
    assert layer.running_mean.dtype == torch.float32
    torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.02)
    y.float().sum().backward()
    assert x16.grad.dtype == torch.bfloat16 and torch.isfinite(x16.grad.float()).all()


@pytest.mark.parametrize("layer_cls,shape", [(BlurPool2d, (2, 3, 9, 8)), (ShortcutAvgPool2d, (2, 3, 7, 6))])
def test_fixed_linear_ops_have_exact_gradients_and_save_nothing(layer_cls, shape):
    layer = layer_cls(3) if layer_cls is BlurPool2d else layer_cls()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    layer.double()
    assert torch.autograd.gradcheck(layer, (x,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    assert saved == []


def test_tresnet_m_saves_at_most_0_7x_the_activation_memory_of_plain_bn():
    x = torch.rand(2, 3, 128, 128)
    plain = create_model("tresnet_m", 10, norm="bn", channels_last=False).train()
    fresh = create_model("tresnet_m", 10, norm="inplace_abn").train()
    tuned = create_model("tresnet_m", 10, norm="inplace_abn").train()
    with torch.no_grad():  # as after loading published weights: no zero scales
        for m in tuned.modules():
            if isinstance(m, BatchNormAct2d):
                m.weight.fill_(1.0)
    base = saved_activation_bytes(plain, x)
    assert saved_activation_bytes(fresh, x) <= 0.7 * base
    assert saved_activation_bytes(tuned, x) <= 0.65 * base


@pytest.mark.slow
def test_torch_compile_gives_the_same_values_and_gradients():
    layer = _pair("leaky_relu")
    x = torch.randn(4, 6, 5, 5)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = layer(x_eager)
    expected.sum().backward()
    got = torch.compile(layer)(x_compiled)
    got.sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, atol=1e-5, rtol=1e-4)
