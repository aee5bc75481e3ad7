"""The TResNet family computes exactly what timm's does, with timm's keys."""
import pytest
import torch

from conftest import reference_tresnet_fill
from tresnet_ft import create_model

ARCH_NAMES = ["tresnet_m", "tresnet_l", "tresnet_xl", "tresnet_v2_l"]


@pytest.mark.parametrize("norm", ["inplace_abn", "bn"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_reproduces_timm_features_and_logits(parity, arch, norm):
    ref = parity["models"][arch]
    model = create_model(arch, num_classes=10, norm=norm).eval()
    assert [k for k in model.state_dict()] == [k for k, _, _ in ref["manifest"]]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    model.load_state_dict(reference_tresnet_fill(ref["manifest"]))  # plain, strict load
    with torch.no_grad():
        features = model.forward_features(parity["input"])
        logits = model.forward_head(features)
    torch.testing.assert_close(features.mean((2, 3)), ref["pooled_features"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=0)
    assert model.num_features == ref["pooled_features"].shape[1]
