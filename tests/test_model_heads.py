"""Every architecture takes every head, for single- and multi-label outputs."""
import pytest
import torch

from tresnet_ft import create_model
from tresnet_ft.losses import asymmetric_loss, cross_entropy

SMALL_DECODER = {"embed_dim": 64, "num_heads": 4, "ffn_dim": 128}


@pytest.mark.parametrize("arch", ["tresnet_m", "tresnet_l", "tresnet_xl", "tresnet_v2_l"])
@pytest.mark.parametrize("head,head_args", [("linear", {}), ("ml_decoder", SMALL_DECODER)])
def test_head_swap_shapes_and_backbone_gradients(arch, head, head_args):
    model = create_model(arch, num_classes=12, head=head, head_args=head_args).train()
    assert model.head_name == head
    x = torch.rand(2, 3, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 12)
    single = cross_entropy(logits, torch.tensor([3, 11]))
    multi = asymmetric_loss(logits, (torch.rand(2, 12) > 0.5).float())
    (single + multi).backward()
    stem_grad = model.body.conv1.conv.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0


def test_reset_classifier_swaps_the_head():
    model = create_model("tresnet_m", num_classes=5)
    model.reset_classifier(80, head="ml_decoder", **SMALL_DECODER)
    assert model.head_name == "ml_decoder"
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 448, 448)).shape == (1, 80)  # 14x14 tokens


def test_unknown_head_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"one of \['linear', 'ml_decoder'\]"):
        create_model("tresnet_m", 3, head="mlp")
