"""Input sizes, layouts and initialisation of the TResNet family."""
import pytest
import torch

from tresnet_ft import create_model
from tresnet_ft.models.tresnet import BasicBlock, Bottleneck


@pytest.fixture(scope="module")
def tresnet_m():
    return create_model("tresnet_m", num_classes=7).eval()


@pytest.mark.parametrize("height,width", [(224, 224), (448, 448), (224, 320), (96, 64)])
def test_forward_features_is_stride_32(tresnet_m, height, width):
    with torch.no_grad():
        features = tresnet_m.forward_features(torch.rand(1, 3, height, width))
        logits = tresnet_m(torch.rand(1, 3, height, width))
    assert features.shape == (1, tresnet_m.num_features, height // 32, width // 32)
    assert logits.shape == (1, 7)


def test_rejects_size_not_multiple_of_4_or_below_32(tresnet_m):
    with pytest.raises(ValueError, match="multiples of 4 and at least 32"):
        tresnet_m(torch.rand(1, 3, 102, 224))
    with pytest.raises(ValueError, match="multiples of 4 and at least 32"):
        tresnet_m(torch.rand(1, 3, 28, 224))


@pytest.mark.parametrize("size", [368, 100])
def test_sides_that_are_not_multiples_of_32_work_as_in_the_paper(tresnet_m, size):
    """The paper fine-tuned Cars and Flowers at 368 px: the stride-2 steps round odd sides up
    (92 -> 46 -> 23 -> 12), and the norm-folded copy and the gradients agree with the model."""
    from tresnet_ft import fuse_for_inference

    images = torch.rand(2, 3, size, size)
    features = tresnet_m.forward_features(images)
    assert features.shape == (2, tresnet_m.num_features, -(-size // 32), -(-size // 32))
    with torch.no_grad():
        torch.testing.assert_close(fuse_for_inference(tresnet_m)(images), tresnet_m(images), atol=1e-4, rtol=1e-4)


def test_channels_last_by_default_and_optional():
    model = create_model("tresnet_m", num_classes=3)
    assert model.body.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    features = model.eval().forward_features(torch.rand(1, 3, 64, 64))
    assert features.is_contiguous(memory_format=torch.channels_last)
    plain = create_model("tresnet_m", num_classes=3, channels_last=False)
    assert plain.body.conv1.conv.weight.is_contiguous()


@pytest.mark.parametrize("arch", ["tresnet_m", "tresnet_v2_l"])
def test_last_norm_of_each_block_starts_at_zero(arch):
    model = create_model(arch, num_classes=3)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks and all(torch.all(b.last_norm().weight == 0) for b in blocks)
    # so each residual branch is the identity and a fresh model is a plain stack of shortcuts
    assert not torch.all(model.body.conv1.bn.weight == 0)


def test_residual_init_sets_every_branch_scale_and_nothing_else():
    default, scaled = create_model("tresnet_m", num_classes=3), create_model("tresnet_m", num_classes=3,
                                                                              residual_init=0.2)
    blocks = [m for m in scaled.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks and all(torch.all(b.last_norm().weight == 0.2) for b in blocks)
    assert torch.equal(scaled.body.conv1.bn.weight, default.body.conv1.bn.weight)


def test_classifier_passes_residual_init_to_the_network():
    from tresnet_ft import TResNetClassifier

    module = TResNetClassifier(num_classes=3, residual_init=0.2)
    assert module.hparams.residual_init == 0.2
    assert torch.all(module.model.body.layer3[0].last_norm().weight == 0.2)


def test_block_layout_matches_the_paper():
    m = create_model("tresnet_m", num_classes=3)
    assert [type(getattr(m.body, f"layer{i}")[0]).__name__ for i in range(1, 5)] == \
        ["BasicBlock", "BasicBlock", "Bottleneck", "Bottleneck"]
    assert m.body.layer4[0].se is None and m.body.layer3[0].se is not None
    assert m.body.conv1.bn.slope == pytest.approx(1e-2) and m.body.layer1[0].conv1.bn.slope == pytest.approx(1e-3)
    v2 = create_model("tresnet_v2_l", num_classes=3)
    assert all(isinstance(getattr(v2.body, f"layer{i}")[0], Bottleneck) for i in range(1, 5))


def test_grad_flows_to_the_stem():
    model = create_model("tresnet_m", num_classes=4).train()
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert model.body.conv1.conv.weight.grad.abs().sum() > 0
