"""Self-contained classifier checkpoints round-trip, and strangers are refused clearly."""
import numpy as np
import pytest
import torch

from tresnet_ft import create_model
from tresnet_ft.classifier.checkpoint import ClassifierInfo, load_classifier, write_classifier
from tresnet_ft.data import EvalPreprocessing


def test_write_then_load_gives_the_same_outputs(tmp_path):
    model = create_model("tresnet_m", 3, head="ml_decoder",
                         head_args={"embed_dim": 32, "num_heads": 4, "ffn_dim": 64}).eval()
    thresholds = {"global_threshold": 0.4, "per_class": torch.tensor([0.3, 0.5, 0.7]), "default_threshold": 0.5,
                  "f1_before": 0.5, "f1_global": 0.6, "f1_after": 0.7}
    info = ClassifierInfo(arch="tresnet_m", classes=["cat", "dog", "owl"], task="multi_label",
                          preprocessing=EvalPreprocessing(64),
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


def test_metadata_from_a_newer_version_is_a_clear_error(tmp_path):
    info = ClassifierInfo(arch="tresnet_m", classes=["a", "b"], task="single_label",
                          preprocessing=EvalPreprocessing(64))
    path = write_classifier(tmp_path / "m.ckpt", create_model("tresnet_m", 2), info)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["tresnet_ft"]["format_version"] = 99
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="newer tresnet-ft"):
        load_classifier(path)


def test_uint8_eval_transform_matches_the_float_one_after_scaling():
    from tresnet_ft.data import images_to_float

    info = ClassifierInfo(arch="tresnet_m", classes=["a"], task="single_label", preprocessing=EvalPreprocessing(64))
    image = np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    as_uint8 = info.eval_transform(output="uint8")(image)
    assert as_uint8.dtype == torch.uint8
    torch.testing.assert_close(images_to_float(as_uint8), info.eval_transform()(image))


def test_the_preprocessing_is_one_entry_that_round_trips(tmp_path):
    preprocessing = EvalPreprocessing(image_size=96, eval_crop="center_crop", eval_crop_fraction=0.9,
                                      mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    info = ClassifierInfo(arch="tresnet_m", classes=["a", "b"], task="single_label", preprocessing=preprocessing)
    path = write_classifier(tmp_path / "m.ckpt", create_model("tresnet_m", 2), info)
    meta = torch.load(path, weights_only=True)["tresnet_ft"]  # plain values only
    assert meta["preprocessing"] == {"image_size": 96, "eval_crop": "center_crop", "eval_crop_fraction": 0.9,
                                     "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4]}
    assert not {"image_size", "eval_crop", "mean", "std"} & set(meta)
    loaded = load_classifier(path).info
    assert loaded.preprocessing == preprocessing and loaded.image_size == 96


def _version_1_metadata(**preprocessing) -> dict:
    """Metadata as tresnet-ft wrote it before the preprocessing became one entry (format 1)."""
    return {"format_version": 1, "arch": "tresnet_m", "classes": ["a", "b"], "task": "single_label",
            "head": "linear", "head_args": {}, "norm": "inplace_abn", "thresholds": None, **preprocessing}


def test_a_checkpoint_with_the_old_flat_preprocessing_keys_still_loads(tmp_path):
    model = create_model("tresnet_m", 2).eval()
    checkpoint = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                  "tresnet_ft": _version_1_metadata(image_size=128, eval_crop="center_crop", eval_crop_fraction=0.8,
                                                    mean=[0.1, 0.2, 0.3], std=[0.9, 0.8, 0.7])}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = load_classifier(tmp_path / "old.ckpt")
    assert loaded.info.preprocessing == EvalPreprocessing(image_size=128, eval_crop="center_crop",
                                                          eval_crop_fraction=0.8, mean=(0.1, 0.2, 0.3),
                                                          std=(0.9, 0.8, 0.7))
    assert loaded.info.preprocessing.decode_size == 160  # 128 / 0.8
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
    # The oldest entries held only image_size; the rest takes the defaults of that time.
    info = ClassifierInfo.from_dict(_version_1_metadata(image_size=64))
    assert info.preprocessing == EvalPreprocessing(image_size=64) and info.to_dict()["format_version"] == 2


def test_metadata_without_any_preprocessing_is_a_clear_error():
    meta = _version_1_metadata()
    with pytest.raises(ValueError, match=r"missing \['preprocessing'\]"):
        ClassifierInfo.from_dict(meta)
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        ClassifierInfo.from_dict({**meta, "image_size": 64, "colour": "red"})
