"""``tresnet-ft serve`` under load: requests/s, p50/p99 latency and lost requests at 1 and 8 clients.

    python benchmarks/bench_serving.py [--arch tresnet_m] [--size 224] [--requests 24]
                                       [--max-batch-size 8] [--batch-timeout 0] [--workers 1]
                                       [--runtime auto|torch|onnxruntime]

A classifier with seeded random weights is written to a temporary folder and served the way users
run it (``python -m tresnet_ft.cli serve CKPT --port 0`` in its own process). Each client is a
thread in this process sending one JPEG (320x240, multipart) at a time and waiting for the answer
(a closed loop): ``--requests`` per client after 2 warm-up requests each. A request is lost when
it gets no answer or not a 200. Latency is from sending the request to reading the whole answer.

The goal compares tail latencies: p99 at 8 clients <= 3 x p99 at 1 client. In a closed loop the
mean latency at ``c`` clients is ``c / throughput(c)``, so the ratio is about ``8 x rps(1) /
rps(8)``: it can only reach 3 when batching 8 images makes each image at least 8/3 = 2.7x cheaper
than batching one. Printed alongside: the server's mean batch size (from ``GET /health``).
"""
from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: make `tresnet_ft` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tresnet_ft import create_model
from tresnet_ft.classifier.checkpoint import ClassifierInfo, write_classifier
from tresnet_ft.data import EvalPreprocessing

REPO = Path(__file__).resolve().parents[1]


def write_checkpoint(folder: Path, arch: str, size: int, classes: int = 10) -> Path:
    torch.manual_seed(0)
    info = ClassifierInfo(arch=arch, classes=[f"class_{i}" for i in range(classes)], task="single_label",
                          preprocessing=EvalPreprocessing(size))
    return write_classifier(folder / "model.ckpt", create_model(arch, classes).eval(), info)


def jpeg_body() -> tuple[bytes, str]:
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_CUBIC)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start_server(checkpoint: Path, folder: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str, Path]:
    log_path = folder / "serve.log"
    command = [sys.executable, "-m", "tresnet_ft.cli", "serve", str(checkpoint), "--port", "0", "--no-access-log",
               "--max-batch-size", str(args.max_batch_size), "--batch-timeout", str(args.batch_timeout),
               "--workers", str(args.workers), "--runtime", args.runtime]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server ended: {log_path.read_text()}")
        found = re.search(r"at http://127\.0\.0\.1:(\d+)/", log_path.read_text())
        if found and "startup complete" in log_path.read_text():
            return process, found.group(1), log_path
        time.sleep(0.2)
    raise SystemExit(f"no server after 300 s: {log_path.read_text()}")


def request(port: str, method: str, path: str, body: bytes | None = None,
            content_type: str = "") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=120)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def load(port: str, clients: int, per_client: int, payload: tuple[bytes, str]) -> dict[str, float]:
    """Closed-loop load; latencies in ms, requests/s over the timed part, lost requests."""
    latencies: list[float] = []
    lost = [0]
    lock = threading.Lock()
    start_barrier = threading.Barrier(clients + 1)

    def client() -> None:
        for _ in range(2):  # warm-up, not timed
            request(port, "POST", "/predict", *payload)
        start_barrier.wait()
        for _ in range(per_client):
            started = time.perf_counter()
            try:
                status, _ = request(port, "POST", "/predict", *payload)
            except OSError:
                status = 0
            elapsed = 1000 * (time.perf_counter() - started)
            with lock:
                latencies.append(elapsed) if status == 200 else None
                lost[0] += status != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start_barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    ordered = sorted(latencies)
    return {"rps": len(latencies) / seconds, "p50": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
            "lost": lost[0], "n": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tresnet_m")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=24, help="timed requests per client")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runtime", default="auto", help="serve's --runtime (auto: ONNX Runtime on a CPU)")
    args = parser.parse_args()
    payload = jpeg_body()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        checkpoint = write_checkpoint(Path(folder), args.arch, args.size)
        process, port, log_path = start_server(checkpoint, Path(folder), args)
        try:
            results = {}
            for clients in (1, 8):
                before = json.loads(request(port, "GET", "/health")[1])
                results[clients] = load(port, clients, args.requests, payload)
                after = json.loads(request(port, "GET", "/health")[1])
                results[clients]["batch"] = (after["images"] - before["images"]) / max(1, after["batches"] - before["batches"])
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    print(f"{args.arch} {args.size} px, runtime {args.runtime}, max batch {args.max_batch_size}, "
          f"batch timeout {args.batch_timeout} s, "
          f"{args.workers} worker(s), {torch.get_num_threads()} torch threads, {args.requests} timed requests per client")
    print("clients  requests/s  p50 ms  p99 ms  mean batch  answered  lost")
    for clients, r in results.items():
        print(f"{clients:7d}  {r['rps']:10.2f}  {r['p50']:6.0f}  {r['p99']:6.0f}  {r['batch']:10.2f}  "
              f"{r['n']:8d}  {r['lost']:4d}")
    one, eight = results[1], results[8]
    print(f"p99(8)/p99(1) = {eight['p99'] / one['p99']:.2f} (goal <= 3); p50(8)/p50(1) = "
          f"{eight['p50'] / one['p50']:.2f}; requests/s 8 vs 1 = {eight['rps'] / one['rps']:.2f}x; "
          f"lost: {one['lost'] + eight['lost']} (goal 0)")


if __name__ == "__main__":
    main()
