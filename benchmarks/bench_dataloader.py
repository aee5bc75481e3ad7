"""Data-loader throughput: images per second per loader worker.

Cases (the training pipeline: crop, flip, RandAugment N=2 M=9, Cutout):
  * CIFAR (in memory, 32 px) -> 224
  * ~500 px JPEG files -> 224
  * ~500 px JPEG files -> 448
  * the same JPEGs in a Parquet file read through ``--data.dataset hf`` -> 224, against the files
    (``--parquet-only`` runs just this case); goal: >= 0.8x the files' images per worker CPU-second

Each case runs a real ``DataLoader`` with 1 and with 2 workers, plus a single-process breakdown of
where the time goes (decode, augment, tensor conversion) and the alternatives tried (full-size vs
DCT-reduced JPEG decode, OpenCV vs Pillow decode, uint8 vs float32 output).

Run from the repository root (with the package installed, or with PYTHONPATH=.):
    python benchmarks/bench_dataloader.py [--quick] [--parquet-only]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from tresnet_ft.data import ImageFileDataset, InMemoryImageDataset, build_transforms, read_image
from tresnet_ft.data.datamodule import TransformedDataset
from tresnet_ft.data.workers import single_threaded_opencv


def make_cifar_like(num: int) -> InMemoryImageDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(num, 32, 32, 3), dtype=np.uint8)
    return InMemoryImageDataset(images, rng.integers(0, 10, num), [str(i) for i in range(10)])


def make_jpegs(folder: Path, num: int, long_side: int = 500) -> list[Path]:
    """Photo-like JPEGs (4:3, landscape and portrait, quality 90): smooth structure plus fine
    grain, so the files are sized like real photos rather than tiny flat ones."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    short_side = long_side * 3 // 4
    for i in range(num):
        height, width = (short_side, long_side) if i % 3 else (long_side, short_side)
        coarse = rng.integers(0, 256, size=(height // 25, width // 25, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        image += rng.normal(0, 10, size=image.shape).astype(np.int16)
        path = folder / f"{i:04d}.jpg"
        cv2.imwrite(
            str(path), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
        paths.append(path)
    return paths


def loader_rate(dataset, workers: int, batch_size: int, batches: int) -> tuple[float, float]:
    """``(images/s wall-clock, images per worker CPU-second)`` through a DataLoader.

    Wall-clock is timed after one warm-up batch per worker. CPU time is what the worker
    processes used (``getrusage`` of the children once they have exited), so the second number
    is the per-core rate even when other programs share the machine.
    """
    single_threaded_opencv()
    total_batches = batches + workers + 1
    # Sampling with replacement lets a small file set feed any number of batches.
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch_size * total_batches)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4,
    )
    before = _children_cpu()
    iterator = iter(loader)
    for _ in range(workers):
        next(iterator)
    start = time.perf_counter()
    count = sum(len(next(iterator)[0]) for _ in range(batches))
    wall_rate = count / (time.perf_counter() - start)
    for _ in iterator:  # drain, so every produced image is counted against the CPU time
        pass
    iterator._shutdown_workers()
    cpu_rate = batch_size * total_batches / (_children_cpu() - before)
    return wall_rate, cpu_rate


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_image_ms(function, items, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            function(item)
    return (time.perf_counter() - start) / (repeat * len(items)) * 1e3


def breakdown(
    paths: list[Path], large: list[Path], cifar: InMemoryImageDataset, size: int
) -> list[tuple[str, float]]:
    """Single-thread milliseconds per image for each stage and each alternative."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    sample = paths[:60]
    photos = [read_image(p) for p in sample]
    train_uint8 = build_transforms(train=True, image_size=size, output="uint8")
    train_float = build_transforms(train=True, image_size=size, output="float")
    bare = build_transforms(
        train=True, image_size=size, output="uint8", randaugment_ops=0, cutout=0.0
    )
    rows = [
        ("decode 500 px JPEG (OpenCV)", per_image_ms(read_image, sample)),
        ("decode 1200 px JPEG, full size (OpenCV)", per_image_ms(read_image, large)),
        (
            f"decode 1200 px JPEG, DCT-reduced to >= {size} px (OpenCV)",
            per_image_ms(lambda p: read_image(p, min_size=size), large),
        ),
    ]
    try:
        from PIL import Image

        def pil_decode(path):
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))

        def pil_draft(path):
            with Image.open(path) as image:
                image.draft("RGB", (size, size))
                return np.asarray(image.convert("RGB"))

        rows.append(("decode 500 px JPEG (Pillow)", per_image_ms(pil_decode, sample)))
        rows.append(
            (f"decode 1200 px JPEG, draft to >= {size} px (Pillow)", per_image_ms(pil_draft, large))
        )
    except ImportError:
        rows.append(("decode JPEG (Pillow)", float("nan")))
    rows += [
        (f"crop+flip only -> {size}, from full-size photo", per_image_ms(bare, photos)),
        (
            f"full train augment -> {size} uint8, from 500 px photo",
            per_image_ms(train_uint8, photos),
        ),
        (
            f"full train augment -> {size} float32, from 500 px photo",
            per_image_ms(train_float, photos),
        ),
        (
            f"full train augment -> {size} uint8, from CIFAR 32 px",
            per_image_ms(train_uint8, [cifar[i][0] for i in range(200)]),
        ),
    ]
    return rows


def parquet_vs_files(paths: list[Path], folder: Path, batch_size: int, batches: int, rounds: int) -> None:
    """The same JPEG bytes as files and as a Parquet file (``datasets`` Image feature, bytes
    embedded) read by :mod:`tresnet_ft.data.hf`, through one worker each, alternated ``rounds``
    times so that both see the same machine load; prints each round and the median ratio."""
    from datasets import Dataset, Features, Image, Value

    from tresnet_ft.data.hf import load_hf

    table = folder / "photos.parquet"
    rows = {"image": [{"bytes": path.read_bytes(), "path": path.name} for path in paths],
            "label": ["a", "b"] * (len(paths) // 2)}
    Dataset.from_dict(rows, features=Features({"image": Image(), "label": Value("string")})).to_parquet(str(table))
    hf = load_hf(table, "train", val_fraction=0.01, cache_dir=str(folder / "hf-cache"))
    hf.min_decode_size = 224
    # The same images, in the same order, as files: the train rows of the table are rows of `paths`.
    files = ImageFileDataset([paths[int(row)] for row in hf.rows], hf.targets, hf.classes, min_decode_size=224)
    transform = build_transforms(train=True, image_size=224, output="uint8")
    cases = {"JPEG files -> 224 train": TransformedDataset(files, transform),
             "Parquet (hf) -> 224 train": TransformedDataset(hf, transform)}
    print(f"\nParquet vs files, 1 worker, {len(hf)} images, {table.stat().st_size / 2**20:.1f} MB Parquet")
    ratios = []
    for round_ in range(rounds):
        rates = {name: loader_rate(case, 1, batch_size, batches)[1] for name, case in cases.items()}
        ratios.append(rates["Parquet (hf) -> 224 train"] / rates["JPEG files -> 224 train"])
        print(f"  round {round_}: " + ", ".join(f"{name} {rate:.0f} img/worker CPU-s" for name, rate in rates.items())
              + f"; ratio {ratios[-1]:.2f}")
    print(f"Parquet / files, images per worker CPU-second: median {np.median(ratios):.2f}x (goal >= 0.8x)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer batches (a smoke run)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--parquet-only", action="store_true", help="only the Parquet-vs-files case")
    args = parser.parse_args()
    batches = 4 if args.quick else 16
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {cores} CPU core(s) usable, "
        f"torch {torch.__version__}, OpenCV {cv2.__version__}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp) / "500", 240)
        large = make_jpegs(Path(tmp) / "1200", 30, long_side=1200)
        size_kb = np.mean([p.stat().st_size for p in paths]) / 1024
        print(f"JPEG set: {len(paths)} files, about 500x375, mean {size_kb:.0f} KB\n")
        if args.parquet_only:
            parquet_vs_files(paths, Path(tmp) / "parquet", args.batch_size, batches, rounds=3)
            return
        cifar = make_cifar_like(5000)
        cases = {}
        for size in (224, 448):
            files = ImageFileDataset(
                paths, np.zeros(len(paths), dtype=np.int64), ["x"], min_decode_size=size
            )
            cases[f"JPEG ~500px -> {size} train"] = TransformedDataset(
                files, build_transforms(train=True, image_size=size, output="uint8")
            )
        cases["CIFAR 32px (memory) -> 224 train"] = TransformedDataset(
            cifar, build_transforms(train=True, image_size=224, output="uint8")
        )
        cases["CIFAR -> 224, float32 out"] = TransformedDataset(
            cifar, build_transforms(train=True, image_size=224, output="float")
        )
        files = ImageFileDataset(
            paths, np.zeros(len(paths), dtype=np.int64), ["x"], min_decode_size=224
        )
        cases["JPEG -> 224, float32 out"] = TransformedDataset(
            files, build_transforms(train=True, image_size=224, output="float")
        )

        print(f"load average before: {os.getloadavg()[0]:.2f} (other programs on this machine)")
        print(
            f"{'case':34s} {'workers':>7s} {'img/s':>7s} {'img/s/worker':>13s} {'img per worker CPU-s':>21s}"
        )
        for name in (
            "CIFAR 32px (memory) -> 224 train",
            "JPEG ~500px -> 224 train",
            "JPEG ~500px -> 448 train",
        ):
            for workers in (1, 2):
                wall, per_cpu = loader_rate(cases[name], workers, args.batch_size, batches)
                print(f"{name:34s} {workers:7d} {wall:7.0f} {wall / workers:13.0f} {per_cpu:21.0f}")
        for name in ("CIFAR -> 224, float32 out", "JPEG -> 224, float32 out"):
            wall, per_cpu = loader_rate(cases[name], 1, args.batch_size, batches)
            print(f"{name:34s} {1:7d} {wall:7.0f} {wall:13.0f} {per_cpu:21.0f}")

        parquet_vs_files(paths, Path(tmp) / "parquet", args.batch_size, batches, rounds=3)

        print("\nsingle-thread breakdown (ms per image)")
        for size in (224, 448):
            for label, ms in breakdown(paths, large, cifar, size):
                print(f"  {label:58s} {ms:6.2f} ms  ({1000 / ms:5.0f} img/s)")


if __name__ == "__main__":
    main()
