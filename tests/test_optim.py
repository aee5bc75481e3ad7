"""Parameter groups and learning-rate schedules for fine-tuning."""
import math

import pytest
import torch
from torch import nn

from tresnet_ft import create_model
from tresnet_ft.training.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine


@pytest.fixture(scope="module")
def model():
    return create_model("tresnet_m", 4)


def test_head_and_backbone_rates_and_no_decay_on_norms_and_biases(model):
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1)}
    assert set(groups) == {"head", "head.no_decay", "backbone", "backbone.no_decay"}
    assert groups["head"]["lr"] == 1e-3 and groups["backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone.no_decay"]["weight_decay"] == 0 and groups["backbone"]["weight_decay"] == 0.05
    no_decay = {id(p) for p in groups["backbone.no_decay"]["params"]}
    assert id(model.body.conv1.bn.weight) in no_decay and id(model.body.layer1[0].se.fc1.bias) in no_decay
    assert id(model.body.conv1.conv.weight) in {id(p) for p in groups["backbone"]["params"]}
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_layer_decay_scales_earlier_stages_down(model):
    groups = {g["name"]: g["lr"] for g in param_groups(model, 1.0, 0.0, backbone_lr_mult=0.5, layer_decay=0.5)}
    assert groups["backbone.depth4.no_decay"] == pytest.approx(0.5)
    assert groups["backbone.depth1.no_decay"] == pytest.approx(0.5 * 0.5 ** 3)
    assert groups["backbone.depth0.no_decay"] == pytest.approx(0.5 * 0.5 ** 4)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["cosine", "onecycle", "constant"])
def test_schedules_step_every_group(model, name):
    opt = build_optimizer("adamw", param_groups(model, 1e-3, 1e-4, 0.1))
    sched = build_scheduler(name, opt, total_steps=20, warmup_steps=2)
    seen = []
    for _ in range(20):
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    ratio = [g["lr"] / g["initial_lr"] for g in opt.param_groups]
    assert max(ratio) - min(ratio) < 1e-9  # every group follows the same curve
    assert (len(set(seen)) == 1) == (name == "constant")


def test_unknown_names_are_clear_errors(model):
    with pytest.raises(ValueError, match="'adamw', 'adam' or 'sgd'"):
        build_optimizer("lion", [])
    with pytest.raises(ValueError, match="scheduler"):
        build_scheduler("step", torch.optim.SGD(model.parameters(), 0.1), 10)


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_uses_the_fused_kernel_with_the_same_result(name):
    torch.manual_seed(0)
    weights = [torch.randn(8, 4), torch.randn(4)]
    fused_params = [nn.Parameter(w.clone()) for w in weights]
    plain_params = [nn.Parameter(w.clone()) for w in weights]
    fused = build_optimizer(name, [{"params": fused_params, "lr": 1e-2, "weight_decay": 0.1}])
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    plain = kind([{"params": plain_params, "lr": 1e-2, "weight_decay": 0.1}], foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for params, opt in ((fused_params, fused), (plain_params, plain)):
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            opt.step()
    for a, b in zip(fused_params, plain_params):
        torch.testing.assert_close(a, b)


def test_integer_parameters_fall_back_to_the_unfused_kernel():
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)]
    assert not build_optimizer("adamw", [{"params": params, "lr": 1e-3}]).defaults["fused"]
