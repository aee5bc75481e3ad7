"""Files built to exhaust a loader: bounded pixels and bytes, regular files only, no blocking.

A decoder allocates whatever size a header declares, however small the file; a FIFO blocks the
``open`` of whoever reads it; ``/dev/zero`` never ends. Each of these is an unreadable file with a
one-line reason, skipped in training and reported in predict, and never a crash or a hang.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.data_builders import write_jpeg
from tests.run_helpers import error_line
from tresnet_ft.data import ImageFileDataset, UnreadableImageError, decode_image, read_image
from tresnet_ft.data.files import image_files
from tresnet_ft.data.image_headers import declared_size, sniff_image_format
from tresnet_ft.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageLimits, check_image_file
from tresnet_ft.data.unreadable import keep_readable
from tresnet_ft.errors import InvalidValueError
from tresnet_ft.inference.inputs import list_image_paths
from tresnet_ft.inference.stream import ImageBatchStream

HANG_SECONDS = 10  # a read that takes this long on a FIFO is blocked on it


def png_header(width: int, height: int, colour_type: int = 6) -> bytes:
    """A PNG that declares ``width x height`` (RGBA by default) and holds no pixel data: ~60 bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP header that declares ``width x height``, without its pixel rows."""
    row = (width * 3 + 3) // 4 * 4
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, row * height, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + row * height, 0, 0, 54) + info


def big_endian_tiff(width: int, height: int) -> bytes:
    """An uncompressed 8-bit grey TIFF in Motorola byte order (pixels 0, 1, 2, ...)."""
    entries = [(256, 3, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 3, height), (279, 4, width * height)]
    pixels_at = 8 + 2 + 12 * len(entries) + 4
    directory = struct.pack(">H", len(entries))
    for tag, kind, value in entries:
        value = pixels_at if tag == 273 else value
        directory += struct.pack(">HHI", tag, kind, 1) + (struct.pack(">HH", value, 0) if kind == 3 else struct.pack(">I", value))
    return b"MM\x00*" + struct.pack(">I", 8) + directory + struct.pack(">I", 0) + bytes(range(width * height))


def jpeg_declaring(height: int, width: int) -> bytes:
    """A real 16x16 JPEG whose start-of-frame is rewritten to declare ``height x width``."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def encoded_37x23() -> dict[str, bytes]:
    """The same 23-row, 37-column image in every format and header variant the decoder reads."""
    from PIL import Image as image_module  # pillow is a test extra
    rgb = np.random.default_rng(0).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((23, 37), 128, np.uint8)])

    def pil(array: np.ndarray, fmt: str, **options) -> bytes:
        buffer = io.BytesIO()
        image_module.fromarray(array).save(buffer, fmt, **options)
        return buffer.getvalue()

    found = {ext: cv2.imencode(ext, rgb)[1].tobytes() for ext in (".jpg", ".png", ".bmp", ".tiff")}
    found["webp VP8 (lossy)"] = cv2.imencode(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes()
    found["webp VP8L (lossless)"] = pil(rgb, "WEBP", lossless=True)
    found["webp VP8X (alpha)"] = pil(rgba, "WEBP", quality=80)
    found["gif"] = pil(rgb, "GIF")
    found["progressive jpeg"] = pil(rgb, "JPEG", progressive=True)
    found["bmp with alpha"] = pil(rgba, "BMP")
    return found


# -- pixels per image ----------------------------------------------------------------------------


def test_every_format_reports_its_declared_size_from_the_header():
    for name, data in encoded_37x23().items():
        assert declared_size(sniff_image_format(data[:16]), data) == (23, 37), name
    assert declared_size("tiff", big_endian_tiff(5, 3)) == (3, 5)
    assert decode_image(big_endian_tiff(5, 3)).shape == (3, 5, 3)  # the decoder agrees


def test_the_pixel_limit_applies_to_every_format():
    for name, data in encoded_37x23().items():
        assert decode_image(data, limits=ImageLimits(max_pixels=23 * 37)).shape == (23, 37, 3), name
        with pytest.raises(UnreadableImageError, match="37x23 = 851 pixels, above the limit of 850 pixels"):
            decode_image(data, limits=ImageLimits(max_pixels=23 * 37 - 1))


def test_a_small_png_declaring_a_huge_image_is_refused_before_the_decoder_allocates(monkeypatch):
    data = png_header(15_000, 15_000)  # 900 MB of RGBA from 57 bytes
    assert len(data) < 100

    def decoder_must_not_run(*args, **kwargs):
        raise AssertionError("the decoder was called on an image above the pixel limit")

    monkeypatch.setattr(cv2, "imdecode", decoder_must_not_run)
    with pytest.raises(UnreadableImageError) as refused:
        decode_image(data, source="bomb.png")
    reason = refused.value.reason
    assert "15000x15000 = 225,000,000 pixels, above the limit of 178,956,970 pixels" in reason
    assert "max_image_pixels" in reason and "TRESNET_FT_MAX_IMAGE_PIXELS" in reason and "\n" not in reason
    with pytest.raises(UnreadableImageError, match="65000x65000"):
        decode_image(jpeg_declaring(65_000, 65_000))


def test_the_environment_variables_set_the_limits_and_arguments_win(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    write_jpeg(path, 20, 30)
    monkeypatch.setenv("TRESNET_FT_MAX_IMAGE_PIXELS", "599")
    with pytest.raises(UnreadableImageError, match="above the limit of 599 pixels"):
        read_image(path)
    assert read_image(path, limits=ImageLimits.resolve(max_pixels=600)).shape == (20, 30, 3)
    monkeypatch.setenv("TRESNET_FT_MAX_IMAGE_PIXELS", "600")
    monkeypatch.setenv("TRESNET_FT_MAX_IMAGE_BYTES", str(path.stat().st_size - 1))
    with pytest.raises(UnreadableImageError, match=f"{path.stat().st_size:,} bytes, above the limit of"):
        read_image(path)
    monkeypatch.setenv("TRESNET_FT_MAX_IMAGE_BYTES", "1GB")
    with pytest.raises(InvalidValueError, match="TRESNET_FT_MAX_IMAGE_BYTES to be a positive integer, but got '1GB'"):
        ImageLimits.resolve()
    with pytest.raises(InvalidValueError, match="max_image_pixels to be a positive integer, but got 0"):
        ImageLimits(max_pixels=0)
    assert ImageLimits().max_pixels == DEFAULT_MAX_IMAGE_PIXELS


def test_an_image_above_the_limit_is_skipped_in_training_and_reported_in_predict(tmp_path, monkeypatch):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i in (0, 2):
        cv2.imwrite(str(paths[i]), np.full((8, 8, 3), 40 * i, np.uint8))
    paths[1].write_bytes(png_header(20_000, 20_000))
    dataset = ImageFileDataset(paths, np.array([0, 1, 0]), ["a", "b"])
    assert np.array_equal(dataset[1][0], dataset[2][0])  # replaced by the next image
    assert "1.png (20000x20000 = 400,000,000 pixels, above the limit" in dataset.unreadable.summary()

    monkeypatch.setenv("TRESNET_FT_MAX_IMAGE_PIXELS", "63")  # predict reads the variable too
    stream = ImageBatchStream([str(p) for p in paths], lambda image: torch.zeros(3, 8, 8, dtype=torch.uint8), 8, 3)
    batch = stream.load_batch(stream.paths)
    assert batch["paths"] == []
    assert [reason.split(",")[0] for _, reason in batch["unreadable"]] == [
        "8x8 = 64 pixels", "20000x20000 = 400", "8x8 = 64 pixels"]


def test_a_header_opencv_rejects_is_an_unreadable_file_with_one_line(tmp_path):
    # 2,097,152 x 1 pixels is under the pixel limit; OpenCV refuses any side over 2^20 with cv2.error.
    wide = tmp_path / "wide.bmp"
    wide.write_bytes(bmp_header(2**21, 1))
    with pytest.raises(UnreadableImageError) as refused:
        read_image(wide)
    assert refused.value.reason.startswith("the decoder refused it (") and "\n" not in refused.value.reason
    with pytest.raises(UnreadableImageError, match="the decoder refused it"):  # OpenCV's own 2^30 limit
        decode_image(png_header(100_000, 100_000), limits=ImageLimits(max_pixels=10**12))
    corrupt_ihdr = bytearray(png_header(8, 8))
    corrupt_ihdr[29] ^= 0xFF  # the header chunk's checksum
    with pytest.raises(UnreadableImageError) as refused:
        decode_image(bytes(corrupt_ihdr))
    assert "\n" not in refused.value.reason
    good = tmp_path / "good.bmp"
    cv2.imwrite(str(good), np.zeros((4, 4, 3), np.uint8))
    dataset = ImageFileDataset([wide, good], np.array([0, 0]), ["a"])
    assert dataset[0][0].shape == (4, 4, 3)
    stream = ImageBatchStream([str(wide)], lambda image: torch.zeros(3, 4, 4, dtype=torch.uint8), 4, 1)
    assert stream.load_batch([str(wide)])["unreadable"][0][1].startswith("the decoder refused it (")


# -- regular files only --------------------------------------------------------------------------


def _hostile_folder(root: Path) -> Path:
    """A folder with a photo, a link to it, and image names that are a FIFO, a link to /dev/zero
    and a broken link."""
    write_jpeg(root / "photo.jpg", 16, 16)
    (root / "link.jpg").symlink_to(root / "photo.jpg")
    os.mkfifo(root / "pipe.jpg")
    (root / "zero.jpg").symlink_to("/dev/zero")
    (root / "gone.png").symlink_to(root / "missing.png")
    return root


def test_the_folder_walker_lists_regular_files_only(tmp_path, caplog):
    folder = _hostile_folder(tmp_path / "photos")
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.data"):
        assert image_files(folder) == [str(folder / "link.jpg"), str(folder / "photo.jpg")]
        assert list_image_paths([folder]) == [str(folder / "link.jpg"), str(folder / "photo.jpg")]
    warning = caplog.records[0].getMessage()
    assert "left out 3 image name(s) that are not regular files" in warning
    assert "gone.png (a broken link)" in warning and "pipe.jpg (a FIFO)" in warning
    assert "zero.jpg (a character device)" in warning


def _finishes(read, fifo: Path):
    """Run ``read()`` in a thread; if it blocks on ``fifo``, unblock it by opening the write end,
    and fail. Returns what ``read`` returned or raised."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = read()
        except Exception as error:  # noqa: BLE001 (handed back to the test)
            outcome["value"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_SECONDS)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY))  # the reader sees end of file and returns
        thread.join()
        pytest.fail(f"reading {fifo} blocked")
    return outcome["value"]


def test_a_fifo_named_directly_or_in_a_table_is_reported_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    error = _finishes(lambda: read_image(fifo), fifo)
    assert isinstance(error, UnreadableImageError) and error.reason == "not a regular file (a FIFO)"
    assert _finishes(lambda: check_image_file(fifo), fifo) == "not a regular file (a FIFO)"
    assert list_image_paths([fifo]) == [str(fifo)]  # named directly: listed, then refused by the reader
    table = tmp_path / "list.csv"
    table.write_text("image\npipe.jpg\n")
    table_fifo = tmp_path / "rows.csv"
    os.mkfifo(table_fifo)  # a FIFO with a table's suffix is never read as a table
    paths = _finishes(lambda: list_image_paths([table, table_fifo]), table_fifo)
    assert [Path(p).name for p in paths] == ["pipe.jpg", "rows.csv"]
    stream = ImageBatchStream(paths, lambda image: torch.zeros(3, 4, 4, dtype=torch.uint8), 4, 2)
    batch = _finishes(lambda: stream.load_batch(paths), fifo)
    assert [reason for _, reason in batch["unreadable"]] == ["not a regular file (a FIFO)"] * 2


def test_devices_and_folders_are_refused_by_kind_before_reading(tmp_path):
    (tmp_path / "null.jpg").symlink_to("/dev/null")
    (tmp_path / "folder.jpg").mkdir()
    write_jpeg(tmp_path / "ok.jpg", 8, 8)
    expected = {"null.jpg": "not a regular file (a character device)", "folder.jpg": "not a regular file (a folder)"}
    for name, reason in expected.items():
        with pytest.raises(UnreadableImageError) as refused:
            read_image(tmp_path / name)
        assert refused.value.reason == reason
        assert check_image_file(tmp_path / name) == reason
    paths = [tmp_path / name for name in [*expected, "ok.jpg"]]
    kept, targets = keep_readable(paths, np.arange(3), "table/train")
    assert kept == [str(tmp_path / "ok.jpg")] and targets.tolist() == [2]


# Run in a child process whose address space is capped at 3 GiB: if the reader ever reads
# /dev/zero again, the child fails with MemoryError instead of exhausting the test machine.
ZERO_SCRIPT = """
import json, sys
import numpy as np, torch
from tresnet_ft.data import ImageFileDataset, UnreadableImageError, read_image
from tresnet_ft.data.images import check_image_file
from tresnet_ft.inference.stream import ImageBatchStream
zero, ok = sys.argv[1:3]
try:
    read_image(zero)
    reason = None
except UnreadableImageError as error:
    reason = error.reason
dataset = ImageFileDataset([zero, ok], np.array([0, 0]), ["a"])
stream = ImageBatchStream([zero, ok], lambda image: torch.zeros(3, 8, 8, dtype=torch.uint8), 8, 2)
print(json.dumps({"read_image": reason, "check": check_image_file(zero), "dataset": dataset[0][0].shape,
                  "stream": stream.load_batch([zero, ok])["unreadable"]}))
"""


def test_a_link_to_dev_zero_is_refused_without_reading_it(tmp_path):
    import json
    import resource
    import subprocess
    import sys

    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    write_jpeg(tmp_path / "ok.jpg", 8, 8)

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    child = subprocess.run([sys.executable, "-c", ZERO_SCRIPT, str(tmp_path / "zero.jpg"), str(tmp_path / "ok.jpg")],
                           preexec_fn=cap_memory, capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).resolve().parents[1])
    assert child.returncode == 0, child.stderr[-2000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])
    reason = "not a regular file (a character device)"
    assert found == {"read_image": reason, "check": reason, "dataset": [8, 8, 3],
                     "stream": [[str(tmp_path / "zero.jpg"), reason]]}


def test_files_above_the_byte_limit_are_not_read(tmp_path):
    path = tmp_path / "photo.jpg"
    write_jpeg(path, 64, 64)
    size = path.stat().st_size
    with pytest.raises(UnreadableImageError, match=f"{size:,} bytes, above the limit of 1,000 bytes"):
        read_image(path, limits=ImageLimits(max_bytes=1000))
    assert read_image(path, limits=ImageLimits(max_bytes=size)).shape == (64, 64, 3)


# -- the data module and the command line ---------------------------------------------------------


def _class_folders(root: Path, per_class: int, unreadable_every: int | None) -> None:
    """``root/{train,val}/{cat,dog}/N.jpg``; with ``unreadable_every=k``, all but every k-th training
    image is truncated (it passes the header check and fails to decode)."""
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            for i in range(per_class):
                path = root / split / label / f"{i:02d}.jpg"
                write_jpeg(path, 24, 24, seed=i)
                if split == "train" and unreadable_every and i % unreadable_every:
                    path.write_bytes(path.read_bytes()[:150])


def test_the_datamodule_passes_its_limits_to_the_datasets(tmp_path, monkeypatch):
    from tresnet_ft.data import ImageDataModule

    _class_folders(tmp_path, 4, None)
    monkeypatch.setenv("TRESNET_FT_MAX_IMAGE_PIXELS", "10")
    data = ImageDataModule("folder", str(tmp_path), image_size=32, batch_size=2, num_workers=0,
                           max_image_bytes=5000, max_unreadable_share=0.75)
    data.setup("fit")
    train = data.datasets["train"].dataset
    assert train.limits == ImageLimits(max_pixels=10, max_bytes=5000)
    assert train.max_unreadable_share == 0.75
    with pytest.raises(InvalidValueError, match="max_unreadable_share to be a share in \\(0, 1\\], but got 0"):
        ImageDataModule("folder", str(tmp_path), max_unreadable_share=0)


@pytest.fixture
def runs_in_tmp(tmp_path, monkeypatch):
    from tresnet_ft.training import loggers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_mostly_unreadable_training_images_stop_the_run_with_one_line(tmp_path, caplog, runs_in_tmp):
    _class_folders(tmp_path / "photos", 8, unreadable_every=4)  # 12 of 16 training images unreadable
    message = error_line(caplog, [
        "fit", "--recipe", "folder", "--data.root", "photos", "--model.pretrained", "null",
        "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "1",
        "--trainer.max_epochs", "1", "--model.plots", "false", "--logger", "csv",
    ])
    assert "are unreadable, more than the limit of 50%" in message
    assert f"read from {Path('photos') / 'train'}" in message
    assert "--data.max_unreadable_share" in message and "TRESNET_FT_MAX_UNREADABLE_SHARE" in message
    assert "\n" not in message and "Traceback" not in message


def test_the_limits_the_messages_name_are_command_line_flags(tmp_path, monkeypatch):
    from tresnet_ft.cli.command import training_args
    from tresnet_ft.cli.lightning_cli import run_cli

    monkeypatch.chdir(tmp_path)
    args, _ = training_args(["fit", "--recipe", "quickstart", "--logger", "csv", "--model.pretrained", "null",
                             "--data.dataset_options", '{"num_images": 8}', "--trainer.max_epochs", "1",
                             "--data.max_image_pixels", "1000", "--data.max_image_bytes", "5000",
                             "--data.max_unreadable_share", "0.9"])
    data = run_cli(args, "quickstart", run=False).datamodule
    assert data.image_limits == ImageLimits(max_pixels=1000, max_bytes=5000)
    assert data.max_unreadable_share == 0.9


def test_a_108_megapixel_phone_photo_is_under_the_default_pixel_limit():
    """The limit is where Pillow refuses a bomb, not where it warns: 12000x9000 phone photos pass it."""
    with pytest.raises(UnreadableImageError) as refused:  # only a header: the decoder itself refuses it
        decode_image(png_header(12_000, 9_000), source="phone.png")
    assert "above the limit" not in refused.value.reason
