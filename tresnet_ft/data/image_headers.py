"""What an image file's header says, read without decoding: its format, its size, where a JPEG ends.

The decoder allocates the whole image as soon as it has read the header, so the size a file
*declares* is the memory it will take, however few bytes the file has: a 1.5 MB PNG that declares
20000x20000 RGBA takes 1.6 GB. :func:`declared_size` reads that size first, so that
:mod:`tresnet_ft.data.images` can refuse the file before anything is allocated. OpenCV has a limit
of its own (``OPENCV_IO_MAX_IMAGE_PIXELS``, 2^30 pixels), but it reads that variable once per
process, when the library loads, so it cannot follow a setting made later, and it fails with a bare
``cv2.error``.

Every parser reads only the fixed fields each format's decoder also requires, and returns ``None``
when they are missing; the decoder then rejects the file itself.
"""

from __future__ import annotations

import re

# Start-of-frame markers carry the JPEG size; C4 (DHT), C8 (reserved) and CC (DAC) do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI (and a stray 0x00 from garbage between segments).
_STANDALONE_MARKERS = frozenset({0x00, 0x01, *range(0xD0, 0xD9)})
# Inside entropy-coded data a 0xFF byte is followed by 0x00 (stuffing), a restart marker or another
# 0xFF (fill); anything else is the marker that ends the scan.
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


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


def jpeg_end(data: bytes) -> int | None:
    """Offset just past the end-of-image marker of the JPEG that starts at byte 0; None if the data
    ends before it (a truncated file).

    The marker is found by following the segments and scans, as the decoder does, not by looking
    at the end of the file: phones append a video to "motion photos" and editors append metadata,
    and an embedded EXIF thumbnail has an end marker of its own. Bytes after the image are ignored.
    """
    offset, size = 2, len(data)
    while True:
        offset = data.find(b"\xff", offset)  # like libjpeg, skip stray bytes between segments
        if offset < 0 or offset + 1 >= size:
            return None
        marker = data[offset + 1]
        if marker == 0xD9:
            return offset + 2
        if marker == 0xFF or marker in _STANDALONE_MARKERS:
            offset += 1 if marker == 0xFF else 2
            continue
        if offset + 4 > size:
            return None
        offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next real marker
            found = _END_OF_SCAN.search(data, offset)
            if found is None:
                return None
            offset = found.start()


def _png_size(data: bytes) -> tuple[int, int] | None:
    # libpng requires IHDR as the first chunk: width and height, 4 bytes each, big-endian.
    if data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def _gif_size(data: bytes) -> tuple[int, int] | None:
    # The logical screen every frame is drawn on: width and height, 2 bytes each, little-endian.
    if len(data) < 10:
        return None
    return int.from_bytes(data[8:10], "little"), int.from_bytes(data[6:8], "little")


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    if int.from_bytes(data[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER: 2-byte sides
        return int.from_bytes(data[20:22], "little"), int.from_bytes(data[18:20], "little")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)  # negative: rows stored top-down
    return abs(height), abs(width)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: the canvas, 3 bytes per side minus one
        return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14 bits per side minus one
        bits = int.from_bytes(data[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        return int.from_bytes(data[28:30], "little") & 0x3FFF, int.from_bytes(data[26:28], "little") & 0x3FFF
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    # The first image file directory (the page OpenCV decodes): tags 256 (width) and 257 (length).
    order = "little" if data[:2] == b"II" else "big"
    start = int.from_bytes(data[4:8], order)
    if start + 2 > len(data):
        return None
    count = int.from_bytes(data[start : start + 2], order)
    sides: dict[int, int] = {}
    for entry in range(start + 2, min(start + 2 + 12 * count, len(data) - 11), 12):
        tag, kind = int.from_bytes(data[entry : entry + 2], order), int.from_bytes(data[entry + 2 : entry + 4], order)
        if tag in (256, 257) and kind in (3, 4):  # SHORT or LONG, stored in the entry itself
            value = data[entry + 8 : entry + (10 if kind == 3 else 12)]
            sides[tag] = int.from_bytes(value, order)
    if len(sides) < 2:
        return None
    return sides[257], sides[256]


_SIZE_READERS = {"jpeg": jpeg_size, "png": _png_size, "gif": _gif_size, "bmp": _bmp_size,
                 "webp": _webp_size, "tiff": _tiff_size}


def declared_size(image_format: str, data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` that the header of ``data`` (a file of ``image_format``, as named by
    :func:`sniff_image_format`) declares, or None if the header has no such fields."""
    return _SIZE_READERS[image_format](data)


__all__ = ["declared_size", "jpeg_end", "jpeg_size", "sniff_image_format"]
