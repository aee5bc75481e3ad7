"""Robust image decoding: any common file becomes an RGB ``uint8`` array ``[H, W, 3]``.

OpenCV (a dependency of albumentations) is the decoder: it uses libjpeg-turbo, can decode JPEGs at
1/2, 1/4 or 1/8 size straight from the DCT coefficients (much faster for large photos), applies the
EXIF orientation, converts CMYK and 16-bit images, and releases the GIL.

Files that cannot be turned into an image raise :class:`UnreadableImageError`; the datasets decide
whether to exclude, skip or stop (see ``unreadable.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import InvalidValueError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

# OpenCV's "reduced" flags include the BGR colour bit; swap it for RGB so no cvtColor is needed.
_RGB = cv2.IMREAD_COLOR_RGB
_REDUCED_RGB = {
    factor: (flag & ~cv2.IMREAD_COLOR) | _RGB
    for factor, flag in (
        (2, cv2.IMREAD_REDUCED_COLOR_2),
        (4, cv2.IMREAD_REDUCED_COLOR_4),
        (8, cv2.IMREAD_REDUCED_COLOR_8),
    )
}
# Start-of-frame markers carry the JPEG size; C4 (DHT), C8 (reserved) and CC (DAC) do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class UnreadableImageError(InvalidValueError):
    """A file that is not a decodable image. ``reason`` says why, in a few words."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"Cannot read image {source}: {reason}.")
        self.source = source
        self.reason = reason


def sniff_image_format(header: bytes) -> str | None:
    """Name the image format from the first 12+ bytes of a file, or ``None`` if none matches."""
    if header.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if header.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if header[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if header.startswith(b"BM"):
        return "bmp"
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "webp"
    if header[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def check_image_file(path: str | os.PathLike) -> str | None:
    """Cheap pre-training check (size and header only). Returns why the file is unusable, or None."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "zero-byte file"
        with open(path, "rb") as handle:
            header = handle.read(16)
    except OSError as error:
        return f"cannot open ({error.strerror or error})"
    if sniff_image_format(header) is None:
        return "not an image (unknown file header)"
    return None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from a JPEG's start-of-frame segment, without decoding; None if absent."""
    offset = 2
    while offset + 9 < len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker in _SOF_MARKERS:
            height = int.from_bytes(data[offset + 5 : offset + 7], "big")
            width = int.from_bytes(data[offset + 7 : offset + 9], "big")
            return height, width
        offset += 2 + length
    return None


def reduction_factor(height: int, width: int, min_size: int | None) -> int:
    """Largest JPEG DCT scaling (1, 2, 4 or 8) that keeps both sides at least ``min_size``."""
    if not min_size:
        return 1
    for factor in (8, 4, 2):
        if min(height, width) // factor >= min_size:
            return factor
    return 1


def decode_image(data: bytes, min_size: int | None = None, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to RGB ``uint8`` ``[H, W, 3]``.

    Args:
        data: the file's bytes.
        min_size: if given, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as both sides
            stay at least this many pixels (e.g. the training resolution).
        source: a name for error messages (usually the path).

    Grayscale is replicated to three channels, alpha is composited on white, 16-bit and float
    images are scaled to 8 bits, CMYK JPEGs are converted, and a JPEG's EXIF orientation is applied.

    Raises:
        UnreadableImageError: empty data, unknown format, a truncated JPEG, or a decoder failure.
    """
    if len(data) == 0:
        raise UnreadableImageError(source, "zero-byte file")
    image_format = sniff_image_format(data[:16])
    if image_format is None:
        raise UnreadableImageError(source, "not an image (unknown file header)")
    buffer = np.frombuffer(data, dtype=np.uint8)
    if image_format == "jpeg":
        image = _decode_jpeg(data, buffer, min_size, source)
    else:
        image = _decode_other(buffer, source)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    return image


def read_image(path: str | os.PathLike, min_size: int | None = None) -> np.ndarray:
    """Read and decode an image file to RGB ``uint8`` ``[H, W, 3]`` (see :func:`decode_image`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UnreadableImageError(str(path), f"cannot open ({error.strerror or error})") from error
    return decode_image(data, min_size=min_size, source=str(path))


def _decode_jpeg(data: bytes, buffer: np.ndarray, min_size: int | None, source: str) -> np.ndarray:
    # Older OpenCV builds return the decoded top part of a truncated JPEG with only a warning; a
    # missing end-of-image marker catches that the same way on every version.
    if data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:
        raise UnreadableImageError(source, "truncated JPEG (no end-of-image marker)")
    size = jpeg_size(data)
    factor = reduction_factor(*size, min_size) if size else 1
    flags = _REDUCED_RGB[factor] if factor > 1 else _RGB
    image = cv2.imdecode(buffer, flags)  # applies EXIF orientation and converts CMYK
    if image is None:
        raise UnreadableImageError(source, "the JPEG decoder failed (corrupt data)")
    return image


def _decode_other(buffer: np.ndarray, source: str) -> np.ndarray:
    # UNCHANGED keeps the alpha channel so transparent pixels can go on white, not on black.
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UnreadableImageError(source, "the decoder failed (corrupt or unsupported data)")
    image = _to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return _composite_on_white(image)
    raise UnreadableImageError(source, f"unsupported channel count {channels}")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    info = np.iinfo(image.dtype)
    scaled = (image.astype(np.float64) - info.min) / (info.max - info.min)
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def _composite_on_white(bgra: np.ndarray) -> np.ndarray:
    alpha = bgra[..., 3:4].astype(np.float32) / 255.0
    rgb = bgra[..., 2::-1].astype(np.float32)
    blended = rgb * alpha + 255.0 * (1.0 - alpha)
    return (blended + 0.5).astype(np.uint8)
