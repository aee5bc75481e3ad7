"""Robust decoding: odd formats become RGB uint8; unreadable files are excluded or skipped."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.data_builders import write_jpeg
from tresnet_ft.data import ImageFileDataset, UnreadableImageError, decode_image, read_image
from tresnet_ft.data.image_headers import jpeg_size
from tresnet_ft.data.images import reduction_factor
from tresnet_ft.data.unreadable import UnreadableLog


def _png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def test_grayscale_becomes_three_equal_channels():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out = decode_image(_png(gray))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)


def test_png_channels_are_returned_in_rgb_order():
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    assert decode_image(_png(bgr))[0, 0].tolist() == [200, 0, 0]


def test_rgba_is_composited_on_white():
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., :3] = (0, 0, 255)  # red
    bgra[0, 0, 3], bgra[0, 1, 3], bgra[0, 2, 3] = 0, 255, 128
    out = decode_image(_png(bgra))
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert out[0, 1].tolist() == [255, 0, 0]  # opaque red stays red
    assert out[0, 2, 0] == 255 and 125 <= out[0, 2, 1] <= 129  # half-transparent red -> pink


def test_16_bit_png_keeps_its_high_byte():
    deep = np.full((3, 3, 3), 0, np.uint16)
    deep[..., 2] = 51400  # red channel: 51400 >> 8 == 200
    deep[..., 0] = 1000  # blue: 3
    out = decode_image(_png(deep))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [200, 0, 3]


def test_cmyk_jpeg_is_converted_to_rgb():
    from PIL import Image as image_module  # pillow is a test extra
    rgb = np.full((16, 16, 3), (200, 30, 40), np.uint8)
    buffer = io.BytesIO()
    image_module.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=95)
    out = decode_image(buffer.getvalue())
    assert out.shape == (16, 16, 3)
    assert np.abs(out[8, 8].astype(int) - [200, 30, 40]).max() <= 4


def _exif_orientation_segment(orientation: int) -> bytes:
    """A minimal APP1 Exif segment holding only the orientation tag (little-endian TIFF)."""
    tiff = b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little")
    tiff += (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little")
    tiff += orientation.to_bytes(2, "little") + b"\x00\x00" + (0).to_bytes(4, "little")
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


def test_exif_orientation_is_applied():
    # 20 rows x 40 columns; the left half is white. Orientation 6 means "rotate 90 deg clockwise".
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 255
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = buffer.tobytes()
    rotated = data[:2] + _exif_orientation_segment(6) + data[2:]
    out = decode_image(rotated)
    assert out.shape == (40, 20, 3)
    assert out[5, 10].min() > 200 and out[-5, 10].max() < 50  # white on top after rotating


def test_reduced_jpeg_decoding_keeps_the_minimum_side(tmp_path):
    path = tmp_path / "big.jpg"
    write_jpeg(path, 600, 800)
    data = path.read_bytes()
    assert jpeg_size(data) == (600, 800)
    assert reduction_factor(600, 800, 224) == 2 and reduction_factor(600, 800, 100) == 4
    assert read_image(path).shape == (600, 800, 3)
    assert read_image(path, min_size=224).shape == (300, 400, 3)
    assert read_image(path, min_size=70).shape == (75, 100, 3)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "zero-byte"),
        (b"<!DOCTYPE html><html>404</html>", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "decoder failed"),
    ],
)
def test_unreadable_bytes_raise_with_a_reason(payload, reason):
    with pytest.raises(UnreadableImageError, match=reason):
        decode_image(payload, source="x.jpg")


def test_truncated_jpeg_is_unreadable(tmp_path):
    path = tmp_path / "cut.jpg"
    write_jpeg(path, 64, 64)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(UnreadableImageError, match="truncated JPEG"):
        read_image(path)


def test_file_dataset_skips_a_bad_file_and_counts_it(tmp_path, caplog):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.jpg")
        write_jpeg(paths[-1], 10, 10, seed=i)
    paths[1].write_bytes(paths[1].read_bytes()[:100])  # truncated after the pre-training check
    dataset = ImageFileDataset(paths, np.array([0, 1, 0, 1]), ["a", "b"])
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.data"):
        items = [dataset[i] for i in range(4)]
        dataset[1]
    # Item 1 is replaced by item 2 (image and label together).
    assert np.array_equal(items[1][0], items[2][0]) and items[1][1] == items[2][1] == 0
    assert [r for r in caplog.records if "Skipped unreadable" in r.getMessage()].__len__() == 1
    summary = dataset.unreadable.summary()
    assert summary.startswith("Skipped 1 unreadable image(s)") and "1.jpg" in summary
    strict = ImageFileDataset(paths, np.array([0, 1, 0, 1]), ["a", "b"], skip_unreadable=False)
    with pytest.raises(UnreadableImageError):
        strict[1]


def test_skips_in_loader_workers_are_summed_through_the_log_file(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.jpg")
        write_jpeg(paths[-1], 10, 10, seed=i)
    for bad in (1, 4):
        paths[bad].write_bytes(paths[bad].read_bytes()[:100])
    dataset = ImageFileDataset(paths, np.zeros(6, dtype=np.int64), ["a"])
    dataset.unreadable = UnreadableLog(tmp_path / "skipped.log")
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2)
    images = torch.cat([batch[0] for batch in loader])
    assert images.shape == (6, 10, 10, 3)
    summary = dataset.unreadable.summary()
    assert summary.startswith("Skipped 2 unreadable image(s)")
    assert "1.jpg" in summary and "4.jpg" in summary


# -- valid images are valid; a run of bad files does not stop an epoch ---------------------------


def _motion_photo_tail(size: int) -> bytes:
    """Bytes like the MP4 a phone appends to a "motion photo", without a JPEG end marker in them."""
    video = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    return b"\x00\x00\x00\x18ftypmp42" + video.replace(b"\xff\xd9", b"\xff\x00")


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_with_data_after_its_end_decodes_like_the_jpeg_alone(tmp_path, progressive):
    from PIL import Image as image_module  # pillow is a test extra
    buffer = io.BytesIO()
    pixels = write_jpeg(tmp_path / "source.jpg", 48, 64)
    image_module.fromarray(pixels).save(buffer, "JPEG", quality=90, progressive=progressive)
    alone = buffer.getvalue()
    for tail in (_motion_photo_tail(300_000), b"\x00" * 8000, b"XMP metadata " * 400):
        path = tmp_path / "motion.jpg"
        path.write_bytes(alone + tail)
        assert np.array_equal(read_image(path), decode_image(alone))
        assert read_image(path, min_size=24).shape == (24, 32, 3)


def test_the_end_of_a_jpeg_is_found_by_its_structure_not_its_last_bytes():
    from tresnet_ft.data.images import jpeg_end

    main = cv2.imencode(".jpg", np.full((64, 64, 3), 77, np.uint8))[1].tobytes()
    thumbnail = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    body = b"Exif\x00\x00" + thumbnail  # an APP1 segment carrying a JPEG thumbnail, end marker included
    with_thumbnail = main[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + main[2:]
    assert jpeg_end(with_thumbnail) == len(with_thumbnail)
    assert jpeg_end(with_thumbnail + b"appended") == len(with_thumbnail)
    cut = with_thumbnail[:-200]  # the thumbnail's end marker is still in the last 4 KB
    assert jpeg_end(cut) is None
    with pytest.raises(UnreadableImageError, match="truncated JPEG"):
        decode_image(cut)


def _files_with_unreadable(tmp_path, count: int, bad: set[int]) -> list:
    paths = []
    for i in range(count):
        paths.append(tmp_path / f"{i:03d}.jpg")
        write_jpeg(paths[-1], 10, 10, seed=i)
        if i in bad:
            paths[-1].write_bytes(paths[-1].read_bytes()[:100])
    return paths


def test_a_long_run_of_unreadable_files_does_not_stop_the_epoch(tmp_path, monkeypatch):
    import tresnet_ft.data.base as base

    paths = _files_with_unreadable(tmp_path, 60, set(range(10, 40)))  # 30 in a row, half the files
    decoded = []
    monkeypatch.setattr(base, "read_image", lambda path, *args: decoded.append(path) or read_image(path, *args))
    dataset = ImageFileDataset(paths, np.zeros(60, dtype=np.int64), ["a"])
    images = [dataset[i][0] for i in range(60)]
    assert all(np.array_equal(images[i], images[40]) for i in range(10, 40))  # all replaced by item 40
    assert dataset.unreadable.summary().startswith("Skipped 30 unreadable image(s)")
    # Each bad file is decoded once, however many items scan past it for a substitute.
    assert sorted(path for path in decoded if int(Path(path).stem) in range(10, 40)) == [str(p) for p in paths[10:40]]


def test_a_high_share_of_unreadable_files_stops_with_the_share_and_the_fix(tmp_path, monkeypatch):
    from tresnet_ft.data.unreadable import TooManyUnreadableError

    paths = _files_with_unreadable(tmp_path, 40, {i for i in range(40) if i % 4})  # 75%, runs of 3
    dataset = ImageFileDataset(paths, np.zeros(40, dtype=np.int64), ["a"])
    for i in range(39):
        dataset[i]  # judged only once every file has been asked for (fewer than 256)
    with pytest.raises(TooManyUnreadableError) as stopped:
        dataset[39]
    message = str(stopped.value)
    assert message.startswith(f"30 of the 40 images read from {tmp_path} (75%) are unreadable, more than "
                              "the limit of 50%: ")
    assert "max_unreadable_share" in message and "TRESNET_FT_MAX_UNREADABLE_SHARE" in message
    tolerant = ImageFileDataset(paths, np.zeros(40, dtype=np.int64), ["a"], max_unreadable_share=0.8)
    assert len([tolerant[i] for i in range(40)]) == 40
    monkeypatch.setenv("TRESNET_FT_MAX_UNREADABLE_SHARE", "0.8")
    from_env = ImageFileDataset(paths, np.zeros(40, dtype=np.int64), ["a"])
    assert from_env.max_unreadable_share == 0.8 and len([from_env[i] for i in range(40)]) == 40


def test_the_stop_crosses_a_loader_worker_as_one_line(tmp_path):
    from tresnet_ft.data.unreadable import TooManyUnreadableError

    paths = _files_with_unreadable(tmp_path, 8, set(range(8)))
    dataset = ImageFileDataset(paths, np.zeros(8, dtype=np.int64), ["a"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1)
    with pytest.raises(TooManyUnreadableError) as stopped:
        next(iter(loader))
    assert str(stopped.value).startswith(f"all 8 images in {tmp_path} are unreadable")
    assert "\n" not in str(stopped.value) and "Traceback" not in str(stopped.value)
