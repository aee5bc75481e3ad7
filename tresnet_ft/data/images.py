"""Robust image decoding: any common file becomes an RGB ``uint8`` array ``[H, W, 3]``.

OpenCV (a dependency of albumentations) is the decoder: it uses libjpeg-turbo, can decode JPEGs at
1/2, 1/4 or 1/8 size straight from the DCT coefficients (much faster for large photos), applies the
EXIF orientation, converts CMYK and 16-bit images, and releases the GIL.

Files that cannot be turned into an image raise :class:`UnreadableImageError`; the datasets decide
whether to exclude, skip or stop (see ``unreadable.py``). That includes anything that would take
unbounded resources (:class:`ImageLimits`): a path that is not a regular file (a FIFO would block
the reader forever, ``/dev/zero`` would fill its memory), a file above ``max_bytes``, and an image
whose header declares more than ``max_pixels`` (checked before the decoder allocates anything).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import cv2
import numpy as np

from .image_headers import declared_size, jpeg_end, sniff_image_format
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

# Where Pillow refuses an image as a decompression bomb (twice its MAX_IMAGE_PIXELS warning): the
# 108-megapixel photos of today's phones pass, while an 8-bit RGBA image this size is 716 MB.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
# Far above any photo (a 200-megapixel JPEG takes tens of MB) and above the largest uncompressed
# TIFF the pixel limit lets through (716 MB); far below a machine's memory.
DEFAULT_MAX_IMAGE_BYTES = 1 << 30
MAX_PIXELS_ENV = "TRESNET_FT_MAX_IMAGE_PIXELS"
MAX_BYTES_ENV = "TRESNET_FT_MAX_IMAGE_BYTES"


class UnreadableImageError(InvalidValueError):
    """A file that is not a decodable image. ``reason`` says why, in a few words."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"Cannot read image {source}: {reason}.")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    """The most one image may take; a file above either limit is unreadable, not a crash.

    Attributes:
        max_pixels: height x width the header may declare (the decoded array is 3-8 bytes a pixel).
        max_bytes: size of the file, read whole into memory before decoding.
    """

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def __post_init__(self) -> None:
        for name, value in (("max_image_pixels", self.max_pixels), ("max_image_bytes", self.max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidValueError(f"Expected {name} to be a positive integer, but got {value!r}.")

    @classmethod
    def resolve(cls, max_pixels: int | None = None, max_bytes: int | None = None) -> ImageLimits:
        """The limits given; for each one left None, its environment variable
        (``TRESNET_FT_MAX_IMAGE_PIXELS``, ``TRESNET_FT_MAX_IMAGE_BYTES``), else the default."""
        return cls(
            max_pixels if max_pixels is not None else _limit_from_env(MAX_PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS),
            max_bytes if max_bytes is not None else _limit_from_env(MAX_BYTES_ENV, DEFAULT_MAX_IMAGE_BYTES),
        )


def _limit_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidValueError(f"Expected the environment variable {name} to be a positive integer, but "
                                f"got {raw!r}. Fix: set it to e.g. {default} (the default), or unset it.")
    return value


def _open_regular_file(path: str | os.PathLike) -> tuple[int, int]:
    """``(file descriptor, size)`` of ``path`` opened for reading, if it is a regular file (links
    followed). A FIFO would block ``open`` until a writer comes, so the kind is checked with
    ``stat`` first and again on the open descriptor (opened non-blocking), in case the path was
    replaced in between."""
    try:
        kind = os.stat(path).st_mode
        if stat.S_ISREG(kind):
            handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            opened = os.fstat(handle)
            if stat.S_ISREG(opened.st_mode):
                return handle, opened.st_size
            os.close(handle)
            kind = opened.st_mode
    except OSError as error:
        raise UnreadableImageError(str(path), f"cannot open ({error.strerror or error})") from error
    raise UnreadableImageError(str(path), f"not a regular file ({_describe_kind(kind)})")


def _describe_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def check_image_file(path: str | os.PathLike) -> str | None:
    """Cheap pre-training check (kind, size and header only). Returns why the file is unusable, or None."""
    try:
        handle, size = _open_regular_file(path)
    except UnreadableImageError as error:
        return error.reason
    try:
        if size == 0:
            return "zero-byte file"
        header = os.read(handle, 16)
    except OSError as error:
        return f"cannot open ({error.strerror or error})"
    finally:
        os.close(handle)
    if sniff_image_format(header) is None:
        return "not an image (unknown file header)"
    return None


def reduction_factor(height: int, width: int, min_size: int | None) -> int:
    """Largest JPEG DCT scaling (1, 2, 4 or 8) that keeps both sides at least ``min_size``."""
    if not min_size:
        return 1
    for factor in (8, 4, 2):
        if min(height, width) // factor >= min_size:
            return factor
    return 1


def decode_image(data: bytes, min_size: int | None = None, source: str = "<bytes>",
                 limits: ImageLimits | None = None) -> np.ndarray:
    """Decode encoded image bytes to RGB ``uint8`` ``[H, W, 3]``.

    Args:
        data: the file's bytes.
        min_size: if given, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as both sides
            stay at least this many pixels (e.g. the training resolution).
        source: a name for error messages (usually the path).
        limits: the most pixels the header may declare; None: :meth:`ImageLimits.resolve`.

    Grayscale is replicated to three channels, alpha is composited on white, 16-bit and float
    images are scaled to 8 bits, CMYK JPEGs are converted, and a JPEG's EXIF orientation is applied.

    Raises:
        UnreadableImageError: empty data, unknown format, a truncated JPEG, a declared size above
            ``limits.max_pixels``, or a decoder failure.
    """
    if len(data) == 0:
        raise UnreadableImageError(source, "zero-byte file")
    image_format = sniff_image_format(data[:16])
    if image_format is None:
        raise UnreadableImageError(source, "not an image (unknown file header)")
    size = declared_size(image_format, data)
    if size is not None:
        _check_pixels(size, limits or ImageLimits.resolve(), source)
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        if image_format == "jpeg":
            image = _decode_jpeg(data, buffer, size, min_size, source)
        else:
            image = _decode_other(buffer, source)
    except cv2.error as error:  # OpenCV refuses some headers with an exception rather than None
        raise UnreadableImageError(source, f"the decoder refused it ({_first_line(error)})") from None
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    return image


def read_image(path: str | os.PathLike, min_size: int | None = None,
               limits: ImageLimits | None = None) -> np.ndarray:
    """Read and decode an image file to RGB ``uint8`` ``[H, W, 3]`` (see :func:`decode_image`).

    Raises:
        UnreadableImageError: also for a path that is not a regular file (after following links)
            or a file larger than ``limits.max_bytes``; neither is read.
    """
    limits = limits or ImageLimits.resolve()
    handle, size = _open_regular_file(path)
    try:
        if size > limits.max_bytes:
            raise UnreadableImageError(str(path), _too_large(f"{size:,} bytes", limits.max_bytes, "bytes", MAX_BYTES_ENV))
        with open(handle, "rb", closefd=False) as stream:
            # The size can change after fstat (a file still being written): read one byte past the limit.
            data = stream.read(limits.max_bytes + 1)
    except OSError as error:
        raise UnreadableImageError(str(path), f"cannot read ({error.strerror or error})") from error
    finally:
        os.close(handle)
    if len(data) > limits.max_bytes:
        grew = f"more than {limits.max_bytes:,} bytes after growing while read"
        raise UnreadableImageError(str(path), _too_large(grew, limits.max_bytes, "bytes", MAX_BYTES_ENV))
    return decode_image(data, min_size=min_size, source=str(path), limits=limits)


def _check_pixels(size: tuple[int, int], limits: ImageLimits, source: str) -> None:
    height, width = size
    if height * width > limits.max_pixels:
        declared = f"{width}x{height} = {height * width:,} pixels"
        raise UnreadableImageError(source, _too_large(declared, limits.max_pixels, "pixels", MAX_PIXELS_ENV))


def _too_large(what: str, limit: int, unit: str, variable: str) -> str:
    argument = "max_image_pixels" if unit == "pixels" else "max_image_bytes"
    return (f"{what}, above the limit of {limit:,} {unit} (raise it with ImageDataModule's {argument}, "
            f"--data.{argument} on the command line, or the environment variable {variable})")


def _first_line(error: cv2.error) -> str:
    # "OpenCV(5.0.0) /io/.../loadsave.cpp:79: error: (-215:Assertion failed) pixels <= ... in function ..."
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(" error: ", 1)[-1][:120]


def _decode_jpeg(data: bytes, buffer: np.ndarray, size: tuple[int, int] | None, min_size: int | None,
                 source: str) -> np.ndarray:
    # OpenCV 5 rejects a JPEG that ends early, OpenCV 4 returns its decoded top part with only a
    # warning; following the segments to the end-of-image marker catches it on every version,
    # wherever the marker is: data after it (a phone's motion-photo video) is not part of the image.
    if jpeg_end(data) is None:
        raise UnreadableImageError(source, "truncated JPEG (no end-of-image marker)")
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
    # Integer arithmetic, rounded like the float formula rgb*a/255 + 255*(1 - a/255): 10 bytes a
    # pixel of temporaries instead of 28, which matters at the pixel limit (89M pixels: 0.9 GB).
    alpha = bgra[..., 3:4].astype(np.uint16)
    blended = bgra[..., 2::-1].astype(np.uint16)
    blended *= alpha  # at most 255 * 255, and the sum below at most 65025 + 127: fits in uint16
    blended += (255 - alpha) * 255 + 127
    blended //= 255
    return blended.astype(np.uint8)
