"""Folding norms into convs keeps the outputs and drops every norm."""
import torch

from conftest import reference_tresnet_fill
from tresnet_ft import create_model, fuse_for_inference
from tresnet_ft.models.norm_act import BatchNormAct2d


def test_fused_model_matches_and_has_no_norms(parity):
    ref = parity["models"]["tresnet_m"]
    model = create_model("tresnet_m", 10, channels_last=False)
    model.load_state_dict(reference_tresnet_fill(ref["manifest"]))
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, BatchNormAct2d) for m in fused.modules())
    assert not any(p.requires_grad for p in fused.parameters())
    assert fused.body.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fused(parity["input"]), ref["logits"], atol=1e-4, rtol=0)
        x = torch.rand(3, 3, 96, 160)
        torch.testing.assert_close(fused(x), model.eval()(x), atol=1e-4, rtol=0)
    assert model.training is False and any(isinstance(m, BatchNormAct2d) for m in model.modules())
