"""Self-contained classifier checkpoints round-trip, and strangers are refused clearly."""
import numpy as np
import pytest
import torch

from tresnet_ft import create_model
from tresnet_ft.checkpoint import ClassifierInfo, load_classifier, write_classifier


def test_write_then_load_gives_the_same_outputs(tmp_path):
    model = create_model("tresnet_m", 3, head="ml_decoder",
                         head_args={"embed_dim": 32, "num_heads": 4, "ffn_dim": 64}).eval()
    thresholds = {"global_threshold": 0.4, "per_class": torch.tensor([0.3, 0.5, 0.7]), "default_threshold": 0.5,
                  "f1_before": 0.5, "f1_global": 0.6, "f1_after": 0.7}
    info = ClassifierInfo(arch="tresnet_m", classes=["cat", "dog", "owl"], task="multi_label", image_size=64,
                          head="ml_decoder", head_args={"embed_dim": 32, "num_heads": 4, "ffn_dim": 64},
                          thresholds=thresholds)
    path = write_classifier(tmp_path / "model.ckpt", model, info)
    loaded = load_classifier(path)
    assert loaded.info.classes == info.classes and loaded.info.head_args == info.head_args
    assert loaded.info.task == "multi_label" and not loaded.model.training
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
    torch.testing.assert_close(loaded.info.decision_thresholds(), torch.tensor([0.3, 0.5, 0.7]))
    assert loaded.info.decision_thresholds(0.9).tolist() == pytest.approx([0.9] * 3)
    image = loaded.info.eval_transform()(np.zeros((50, 80, 3), np.uint8))
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32


def test_a_plain_state_dict_is_not_a_classifier_checkpoint(tmp_path):
    torch.save(create_model("tresnet_m", 3).state_dict(), tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="not a tresnet-ft classifier checkpoint"):
        load_classifier(tmp_path / "weights.pth")
