"""Builders for small datasets in each official on-disk layout, filled with random pixels.

Used by the data tests; everything is written under a pytest ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import scipy.io


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_jpeg(path: Path, height: int, width: int, seed: int = 0, quality: int = 90) -> np.ndarray:
    """A smooth random RGB image saved as JPEG; returns the RGB pixels written."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3)).astype(
        np.uint8
    )
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return image


# -- CIFAR -------------------------------------------------------------------------------------


def cifar_batch(num: int, seed: int, label_key: str, num_classes: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, size=(num, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, size=num)],
        "filenames": [f"img_{i}.png" for i in range(num)],
    }


def write_cifar_archive(tmp: Path, spec, per_file: int = 40) -> tuple[Path, dict[str, dict]]:
    """A real ``.tar.gz`` in the official layout for ``spec`` (CIFAR10 or CIFAR100); returns
    the archive and the batches written, by file name."""
    batches = {}
    num_classes = len(spec.classes)
    buffer_files = {}
    for seed, name in enumerate([*spec.train_files, *spec.test_files]):
        batch = cifar_batch(per_file, seed, spec.label_key, num_classes)
        batches[name] = batch
        buffer_files[name] = pickle.dumps(batch, protocol=2)
    buffer_files[spec.meta_file[0]] = pickle.dumps({spec.names_key: list(spec.classes)}, protocol=2)
    archive = tmp / spec.archive.filename
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in buffer_files.items():
            info = tarfile.TarInfo(f"{spec.folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive, batches


# -- Flowers-102 -------------------------------------------------------------------------------


def write_flowers(
    folder: Path, per_split: tuple[int, int, int] = (6, 4, 5), seed: int = 0
) -> dict[str, np.ndarray]:
    """``jpg/``, ``imagelabels.mat`` and ``setid.mat`` in the official layout; returns the
    1-based image ids per split and the 1-based labels under ``"labels"``."""
    rng = np.random.default_rng(seed)
    total = sum(per_split)
    labels = rng.integers(1, 103, size=total)
    ids = rng.permutation(np.arange(1, total + 1))
    for image_id in range(1, total + 1):
        write_jpeg(folder / "jpg" / f"image_{image_id:05d}.jpg", 40, 50, seed=image_id)
    split_ids = np.split(ids, np.cumsum(per_split)[:2])
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": labels.reshape(1, -1)})
    scipy.io.savemat(
        folder / "setid.mat",
        {
            "trnid": split_ids[0].reshape(1, -1),
            "valid": split_ids[1].reshape(1, -1),
            "tstid": split_ids[2].reshape(1, -1),
        },
    )
    return {"train": split_ids[0], "val": split_ids[1], "test": split_ids[2], "labels": labels}


# -- Stanford Cars -----------------------------------------------------------------------------

CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
_ANNO_FIELDS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]


def _struct(rows: list[tuple], names: list[str]) -> np.ndarray:
    """A MATLAB struct array ``1 x N`` (as in the devkit files)."""
    array = np.empty((1, len(rows)), dtype=[(name, "O") for name in names])
    for i, row in enumerate(rows):
        array[0, i] = row
    return array


def write_cars_devkit(
    folder: Path, num_train: int = 6, num_test: int = 4, nested: bool = False
) -> dict[str, list[int]]:
    """The devkit layout; returns the 1-based classes per split."""
    classes = {}
    for split, count in (("train", num_train), ("test", num_test)):
        image_dir = folder / f"cars_{split}" / (f"cars_{split}" if nested else "")
        labels = [(i % len(CAR_NAMES)) + 1 for i in range(count)]
        rows = []
        for i, label in enumerate(labels):
            name = f"{i + 1:05d}.jpg"
            write_jpeg(image_dir / name, 30, 45, seed=i + (100 if split == "test" else 0))
            rows.append((1, 1, 40, 25, label, name))
        annos = {"annotations": _struct(rows, _ANNO_FIELDS)}
        target = (
            folder / "devkit" / "cars_train_annos.mat"
            if split == "train"
            else folder / "cars_test_annos_withlabels.mat"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(target, annos)
        classes[split] = labels
    names = np.empty((1, len(CAR_NAMES)), dtype=object)
    names[0, :] = CAR_NAMES
    scipy.io.savemat(folder / "devkit" / "cars_meta.mat", {"class_names": names})
    return classes


def write_cars_all_in_one(folder: Path, num: int = 8) -> list[tuple[int, int]]:
    """``car_ims/`` + ``cars_annos.mat``; returns ``(class, is_test)`` per image (1-based class)."""
    rows, truth = [], []
    for i in range(num):
        label, is_test = (i % len(CAR_NAMES)) + 1, int(i % 2 == 1)
        name = f"car_ims/{i + 1:06d}.jpg"
        write_jpeg(folder / name, 30, 45, seed=i)
        rows.append((name, 1, 1, 40, 25, label, is_test))
        truth.append((label, is_test))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    names = np.empty((1, len(CAR_NAMES)), dtype=object)
    names[0, :] = CAR_NAMES
    scipy.io.savemat(
        folder / "cars_annos.mat", {"annotations": _struct(rows, fields), "class_names": names}
    )
    return truth


# -- a loopback HTTP server --------------------------------------------------------------------


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.files`` (name → bytes), honouring ``Range`` when allowed."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        payload = server.files.get(self.path.lstrip("/"))
        if payload is None:
            self.send_error(404)
            return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and server.honour_range:
            start = int(ranged.split("=")[1].split("-")[0])
            if start >= len(payload):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        limit = server.cut_after.pop(0) if server.cut_after else None
        self.wfile.write(body if limit is None else body[:limit])

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@contextmanager
def serve_files(
    files: dict[str, bytes], honour_range: bool = True
) -> Iterator[http.server.HTTPServer]:
    """A loopback HTTP server in a thread; ``server.url(name)`` gives a file's URL.

    Set ``server.cut_after = [n]`` to make the next response stop after ``n`` body bytes.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.files, server.honour_range, server.requests, server.cut_after = (
        files,
        honour_range,
        [],
        [],
    )
    server.url = lambda name: f"http://127.0.0.1:{server.server_address[1]}/{name}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
