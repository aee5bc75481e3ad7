"""Train and eval transforms, normalisation, and the RandAugment-style policy."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from tresnet_ft.data import EvalPreprocessing, TransformConfig, build_transforms, images_to_float
from tresnet_ft.data.transforms import randaugment_ops

RNG = np.random.default_rng(0)
SMALL = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
PHOTO = RNG.integers(0, 256, (375, 500, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [224, 384, 448])
@pytest.mark.parametrize("crop", ["random_resized_crop", "squish_random_crop", "squish"])
def test_train_output_is_a_float_tensor_in_unit_range(size, crop):
    transform = build_transforms(train=True, image_size=size, train_crop=crop)
    for image in (SMALL, PHOTO):
        out = transform(image)
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0


def test_eval_squish_keeps_the_whole_image_and_center_crop_cuts_the_sides():
    image = np.zeros((300, 600, 3), np.uint8)
    image[:, :30] = 255  # a white stripe along the left edge (5% of the width)
    squish = build_transforms(train=False, image_size=64)(image)
    cropped = build_transforms(train=False, image_size=64, eval_crop="center_crop")(image)
    assert squish[:, :, :2].min() > 0.95  # the stripe survives a squish
    assert cropped[:, :, :2].max() < 0.05  # a center crop drops it
    assert squish.shape == cropped.shape == (3, 64, 64)


def test_eval_is_deterministic_and_uint8_output_matches_float():
    eval_float = build_transforms(train=False, image_size=96)
    eval_uint8 = build_transforms(train=False, image_size=96, output="uint8")
    a, b = eval_float(PHOTO), eval_float(PHOTO)
    raw = eval_uint8(PHOTO)
    assert torch.equal(a, b) and raw.dtype == torch.uint8 and raw.shape == (3, 96, 96)
    assert torch.allclose(images_to_float(raw), a)


def test_normalisation_is_a_setting_and_tresnet_uses_none():
    assert EvalPreprocessing().identity_normalisation  # TResNet: mean 0, std 1
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # another backbone's
    plain = build_transforms(train=False, image_size=32)(SMALL)
    normed = build_transforms(train=False, image_size=32, mean=mean, std=std)(SMALL)
    expected = (plain - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(normed, expected, atol=1e-6)
    # Unit-range values: 255 -> 1.0 exactly, 0 -> 0.0.
    edge = np.zeros((32, 32, 3), np.uint8)
    edge[:16] = 255
    out = build_transforms(train=False, image_size=32)(edge)
    assert out[:, :16].min() == 1.0 and out[:, 16:].max() == 0.0


def test_images_to_float_on_a_batch():
    batch = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = images_to_float(batch, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert out.shape == (2, 3, 2, 2) and out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, -0.6, 1.0]))


def test_every_randaugment_op_keeps_shape_and_dtype_and_changes_pixels():
    image = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    changed = 0
    for op in randaugment_ops(magnitude=20):
        out = A.Compose([op], seed=1)(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8
        changed += not np.array_equal(out, image)
    assert (
        changed >= len(randaugment_ops(20)) - 2
    )  # all but the identity (and maybe one no-op draw)


def test_randaugment_magnitude_zero_is_nearly_identity():
    image = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))[..., None].repeat(3, 2)
    # AutoContrast/Equalize have no strength; the geometric and colour ops at M=0 do nothing.
    geometric = [
        op for op in randaugment_ops(0) if isinstance(op, (A.Affine, A.RandomBrightnessContrast))
    ]
    for op in geometric:
        assert np.array_equal(A.Compose([op], seed=0)(image=image)["image"], image)


def test_cutout_blanks_a_square_of_the_configured_size():
    flat = np.full((64, 64, 3), 77, np.uint8)
    transform = build_transforms(
        train=True,
        image_size=64,
        train_crop="squish",
        hflip=0.0,
        randaugment_ops=0,
        cutout=1.0,
        cutout_size=0.25,
    )
    out = transform(flat)
    changed = (out != 77 / 255).any(dim=0)
    rows, cols = changed.nonzero(as_tuple=True)
    assert (
        changed.sum() == 16 * 16
        or (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == 256
    )


def test_bad_settings_raise_value_errors():
    with pytest.raises(ValueError, match="Unknown transform settings"):
        build_transforms(image_sise=224)
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        TransformConfig(randaugment_magnitude=40)
    with pytest.raises(ValueError, match="eval_crop"):
        build_transforms(train=False, eval_crop="letterbox")(SMALL)
    with pytest.raises(ValueError, match="output"):
        build_transforms(output="half")


def test_the_eval_transform_is_the_preprocessing_and_nothing_else():
    """Eval settings reach the transform only through EvalPreprocessing; the train size is its size."""
    preprocessing = EvalPreprocessing(image_size=64, eval_crop="center_crop", eval_crop_fraction=0.5)
    config = TransformConfig(preprocessing=preprocessing)
    assert config.image_size == 64 and build_transforms(config, train=True)(PHOTO).shape == (3, 64, 64)
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = 255  # the central square is white, the sides black
    # fraction 0.5: the short side goes to 128, and the central 64 px of the 384 px width are all white
    out = build_transforms(config, train=False)(image)
    assert out.shape == (3, 64, 64) and out.min() == 1.0
    assert build_transforms(train=False, image_size=64, eval_crop="center_crop",
                            eval_crop_fraction=0.5)(image).equal(out)
