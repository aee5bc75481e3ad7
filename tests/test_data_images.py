"""Robust decoding: odd formats become RGB uint8; unreadable files are excluded or skipped."""

from __future__ import annotations

import io
import logging

import cv2
import numpy as np
import pytest
import torch

from tests.data_builders import write_jpeg
from tresnet_ft.data import ImageFileDataset, UnreadableImageError, decode_image, read_image
from tresnet_ft.data.images import jpeg_size, reduction_factor
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
    image_module = pytest.importorskip("PIL.Image")
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
