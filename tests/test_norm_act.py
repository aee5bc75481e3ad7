"""In-place ABN computes BatchNorm + activation exactly, with less memory for backward."""
import pytest
import torch
import torch.nn.functional as F

from tresnet_ft import convert_sync_norm, create_model
from tresnet_ft.models.layers import BlurPool2d, ShortcutAvgPool2d
from benchmarks.memory import saved_activation_bytes
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


# -- half precision: every norm path under bf16 and fp16 autocast, behind a conv ------------------

def _conv_norm(path):
    """A conv followed by the norm layer of ``path``, with one channel's weight tiny for "fallback"."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)  # as in TResNet
    norm = (BatchNormAct2d if path == "bn" else InPlaceABN)(6, slope=1e-3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
        norm.running_var.uniform_(0.5, 2)
        if path == "fallback":
            norm.weight[1] = 1e-4  # too small to invert: the layer keeps its input
    norm.train(path != "eval")
    return torch.nn.Sequential(conv, norm)


def _run(net, x, grad, dtype):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        y = net(x)
    y.float().backward(grad)
    return [y.detach().float(), x.grad, *(p.grad.clone() for p in net.parameters())]


def _torch_batchnorm_like(net):
    """nn.BatchNorm2d + nn.LeakyReLU with the same state: the half-precision error to live with."""
    bn = torch.nn.BatchNorm2d(6)
    bn.load_state_dict(net[1].state_dict())
    return torch.nn.Sequential(net[0], bn.train(net[1].training), torch.nn.LeakyReLU(net[1].slope))


def _relative_errors(got, reference):
    return [float((a - b).norm() / b.norm()) for a, b in zip(got, reference)]


def _one_process_group(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    return dist


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", ["inplace", "fallback", "bn", "synchronised", "eval"])
def test_every_norm_path_runs_under_half_precision_autocast_close_to_float32(path, dtype, tmp_path):
    g = torch.Generator().manual_seed(0)
    x, grad = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 6, 8, 8, generator=g)
    reference = _run(_conv_norm(path), x, grad, None)
    torch_error = _relative_errors(_run(_torch_batchnorm_like(_conv_norm(path)), x, grad, dtype), reference)
    net = _conv_norm(path)
    dist = None
    if path == "synchronised":
        dist = _one_process_group(tmp_path)
        convert_sync_norm(net)
        assert net[1]._stats_group() is not None  # the distributed code path runs
    try:
        got = _run(net, x, grad, dtype)
    finally:
        if dist is not None:
            dist.destroy_process_group()
    assert all(torch.isfinite(t).all() for t in got)
    # Output, input gradient, conv and norm parameter gradients: within half precision of float32,
    # and no further from it than torch's own BatchNorm2d + LeakyReLU under the same autocast (an element
    # whose pre-activation changes sign in half precision moves its gradient by 1/slope: ~5 % here).
    for ours, theirs in zip(_relative_errors(got, reference), torch_error):
        assert ours <= 1.5 * theirs + 1e-3 and ours <= 0.1, (ours, theirs)


def test_the_fallback_keeps_the_input_under_autocast_and_the_inplace_path_its_output():
    x = torch.randn(2, 3, 8, 8)
    for path, keeps_output in (("inplace", True), ("fallback", False)):
        net = _conv_norm(path)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = net(x)
        big = [t for t in saved if t.shape == y.shape]
        assert any(t.data_ptr() == y.data_ptr() for t in big) == keeps_output


# -- host syncs: one batched decision per step instead of one sync per layer --------------------

def test_refresh_decides_every_layer_in_one_sync_and_the_forward_makes_none():
    from tresnet_ft.models import refresh_invertibility
    from benchmarks.host_syncs import HostSyncCounter
    model = create_model("tresnet_m", 5).train()  # fresh: each block's last norm is zero
    x = torch.rand(2, 3, 64, 64)
    with HostSyncCounter() as unrefreshed:
        model(x).sum().backward()
    norms = [m for m in model.modules() if isinstance(m, InPlaceABN)]
    assert unrefreshed.total == len(norms)  # today's cost without a refresh: one per layer
    with HostSyncCounter() as refreshed:
        assert refresh_invertibility(model, torch.tensor(2.5)) == [2.5]
        model(x).sum().backward()
    assert refreshed.total == 1, refreshed.counts
    zero_init = [m for m in norms if not bool((m.weight.abs() >= 1e-3).all())]
    assert zero_init and all(not m.keeps_output for m in zero_init)
    assert all(m.keeps_output for m in norms if m not in zero_init)


def test_a_refreshed_decision_is_used_once_so_changed_weights_are_checked_again():
    from tresnet_ft.models import refresh_invertibility
    layer = _pair("leaky_relu")
    refresh_invertibility(layer)
    assert layer.keeps_output
    layer(torch.randn(3, 6, 4, 4))  # uses the refreshed decision
    with torch.no_grad():
        layer.weight[2] = 0.0  # e.g. an optimizer step that no refresh has seen
    x_ref = torch.randn(3, 6, 4, 4, requires_grad=True)
    x_ours = x_ref.detach().clone().requires_grad_()
    expected, bn = _reference(x_ref, layer, True)
    got = layer(x_ours)
    assert not layer.keeps_output  # checked again, not the stale "invertible"
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(layer.weight.grad, bn.weight.grad, atol=1e-4, rtol=1e-4)
