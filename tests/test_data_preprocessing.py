"""EvalPreprocessing: validated where it is made, one decode-size rule, one uint8 → float conversion,
and a plain-dict form that checkpoints and JSON read back."""

from __future__ import annotations

import json

import pytest
import torch

from tresnet_ft.data import EvalPreprocessing, images_to_float
from tresnet_ft.errors import InvalidValueError

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@pytest.mark.parametrize(
    ("size", "fix"),
    [(102, "--data.image_size 100 or 104"), (370, "--data.image_size 368 or 372"), (16, "--data.image_size 32")],
)
def test_a_size_not_divisible_by_4_names_the_flag_and_the_nearest_sizes(size, fix):
    with pytest.raises(InvalidValueError, match="image_size to be a multiple of 4 of at least 32") as error:
        EvalPreprocessing(image_size=size)
    assert f"but got {size}" in str(error.value) and str(error.value).endswith(f"Fix: {fix}.")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"eval_crop": "letterbox"}, "Expected eval_crop to be one of ['squish', 'center_crop'], but got 'letterbox'"),
        ({"eval_crop_fraction": 0.0}, "Expected eval_crop_fraction in (0, 1], but got 0.0"),
        ({"eval_crop_fraction": 1.5}, "Expected eval_crop_fraction in (0, 1], but got 1.5"),
        ({"std": (1.0, 0.0, 1.0)}, "Expected a positive std per channel, but got (1.0, 0.0, 1.0)"),
        ({"mean": (0.5, 0.5)}, "Expected mean to be three numbers (R, G, B), but got (0.5, 0.5)"),
        ({"image_size": 224.0}, "Expected image_size to be an integer multiple of 4, but got 224.0"),
    ],
)
def test_bad_settings_fail_where_the_object_is_made(settings, message):
    with pytest.raises(InvalidValueError) as error:
        EvalPreprocessing(**settings)
    assert message in str(error.value)


def test_the_decode_size_is_the_side_the_eval_resize_keeps():
    assert EvalPreprocessing(image_size=224).decode_size == 224  # squish: both sides go to S
    assert EvalPreprocessing(image_size=224, eval_crop="center_crop").decode_size == 256  # 224 / 0.875
    assert EvalPreprocessing(image_size=448, eval_crop="center_crop", eval_crop_fraction=0.95).decode_size == 472
    assert EvalPreprocessing(image_size=96, eval_crop="center_crop", eval_crop_fraction=1.0).decode_size == 96


def test_to_dict_is_plain_and_from_dict_reads_it_back(tmp_path):
    preprocessing = EvalPreprocessing(image_size=320, eval_crop="center_crop", eval_crop_fraction=0.9, **IMAGENET)
    plain = preprocessing.to_dict()
    assert plain == {"image_size": 320, "eval_crop": "center_crop", "eval_crop_fraction": 0.9,
                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    torch.save(plain, tmp_path / "p.pt")
    assert EvalPreprocessing.from_dict(torch.load(tmp_path / "p.pt", weights_only=True)) == preprocessing
    assert EvalPreprocessing.from_dict(json.loads(json.dumps(plain))) == preprocessing
    assert EvalPreprocessing.from_dict({"image_size": 64}) == EvalPreprocessing(image_size=64)
    with pytest.raises(InvalidValueError, match=r"Unknown evaluation preprocessing settings \['size'\]"):
        EvalPreprocessing.from_dict({"size": 64})


def test_coerce_takes_the_object_a_dict_or_none():
    preprocessing = EvalPreprocessing(image_size=64)
    assert EvalPreprocessing.coerce(preprocessing) is preprocessing
    assert EvalPreprocessing.coerce({"image_size": 64}) == preprocessing
    assert EvalPreprocessing.coerce(None) == EvalPreprocessing()
    with pytest.raises(InvalidValueError, match="but got int"):
        EvalPreprocessing.coerce(64)


def test_to_float_scales_and_normalises_and_to_unit_range_undoes_the_normalisation():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    plain = EvalPreprocessing()
    assert plain.identity_normalisation
    torch.testing.assert_close(plain.to_float(pixels), pixels.float() / 255)
    normalised = EvalPreprocessing(**IMAGENET)
    assert not normalised.identity_normalisation
    expected = (pixels.float() / 255 - torch.tensor(IMAGENET["mean"]).view(3, 1, 1)) / torch.tensor(
        IMAGENET["std"]
    ).view(3, 1, 1)
    out = normalised.to_float(pixels)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(images_to_float(pixels, **IMAGENET), expected)  # the same conversion
    torch.testing.assert_close(normalised.to_unit_range(out), pixels.float() / 255)
    assert plain.to_unit_range(out) is out  # nothing to undo for TResNet


def test_to_float_can_write_into_a_reused_buffer():
    buffer = torch.full((4, 3, 2, 2), -1.0).contiguous(memory_format=torch.channels_last)
    pixels = torch.randint(0, 256, (3, 3, 2, 2), dtype=torch.uint8)
    out = EvalPreprocessing(**IMAGENET).to_float(pixels, out=buffer[:3])
    assert out.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(out, EvalPreprocessing(**IMAGENET).to_float(pixels))
    assert (buffer[3] == -1.0).all()  # rows past the batch are left alone


def test_lists_and_tuples_make_equal_objects():
    """YAML and checkpoints give lists; the object compares equal to one made with tuples."""
    assert EvalPreprocessing(mean=[0, 0, 0], std=[1, 1, 1]) == EvalPreprocessing()
    assert EvalPreprocessing(mean=[0, 0, 0]).mean == (0.0, 0.0, 0.0)
