"""tresnet-ft serve over real HTTP on 127.0.0.1: answers equal predict's rows under concurrent
clients, bad payloads get 4xx JSON, disconnecting clients do no harm, startup errors are one line.

The single-label server runs as the command really runs (``python -m tresnet_ft.cli serve``, a
subprocess stopped with SIGTERM); the multi-label and timeout servers run in this process
(:class:`tresnet_ft.serve.BackgroundServer`, uvicorn in a thread on a real socket).
"""
from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from tests.classifier_builders import multi_label_checkpoint, single_label_checkpoint, write_photo_folder
from tests.run_helpers import command_env, error_line
from tresnet_ft.inference.predict import predict_to_file
from tresnet_ft.serve import BackgroundServer, ServeSettings
from tresnet_ft.serve.batcher import BatchQueue, QueueFullError

pytestmark = pytest.mark.slow  # each server loads a TResNet-M; the module takes ~15 s on 2 cores

UPLOAD_CAP_MB = 1


def post(url: str, body: bytes, content_type: str, path: str = "predict") -> tuple[int, dict]:
    """POST ``body`` to ``url + path``; the status and the parsed JSON answer."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("POST", "/" + path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def get(url: str, path: str) -> tuple[int, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", "/" + path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def multipart(files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of ``(field, file name, bytes)`` parts, and its content type."""
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for field, name, data in files)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_files(url: str, paths: list[Path], field: str = "image") -> tuple[int, dict]:
    return post(url, *multipart([(field, path.name, path.read_bytes()) for path in paths]))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    readable, _ = write_photo_folder(tmp_path_factory.mktemp("photos"))
    return readable


@pytest.fixture(scope="module")
def single_server(tmp_path_factory):
    """``tresnet-ft serve`` in a subprocess on a free port; yields its URL; SIGTERM must end it cleanly."""
    folder = tmp_path_factory.mktemp("serve")
    log_path = folder / "serve.log"
    with open(log_path, "w") as log_file:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            [sys.executable, "-m", "tresnet_ft.cli", "serve", str(single_label_checkpoint()), "--port", "0",
             "--max-upload-mb", str(UPLOAD_CAP_MB), "--max-batch-size", "4"],
            cwd=folder, env=command_env(folder), stdout=log_file, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_url(process, log_path)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal so a supervisor sees why it ended
    assert code in (0, -signal.SIGTERM), log_path.read_text()
    assert "Application shutdown complete" in log_path.read_text()
    assert "Traceback" not in log_path.read_text()


def _wait_for_url(process: subprocess.Popen, log_path: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", log_path.read_text())
        if found and get(found.group(1), "health")[0] == 200:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no server after {timeout} s: {log_path.read_text()}")


@pytest.fixture(scope="module")
def multi_server():
    with BackgroundServer(multi_label_checkpoint(), ServeSettings(port=0, access_log=False)) as server:
        yield server.url


def predicted_rows(checkpoint: Path, photos: list[Path], folder: Path) -> dict[str, dict]:
    output = folder / "rows.jsonl"
    predict_to_file(checkpoint, photos, output, top_k=5, num_workers=0, progress=False)
    return {Path(row["path"]).name: row for row in map(json.loads, output.read_text().splitlines())}


def test_health_info_and_the_page(single_server):
    status, body = get(single_server, "health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    info = json.loads(get(single_server, "info")[1])
    assert info["task"] == "single_label" and info["classes"] == ["ant", "bee", "cat", "dog", "eel"]
    status, page = get(single_server, "")
    assert status == 200 and b'type="file"' in page and b"http" not in page.split(b"<body>")[1]  # no CDN


def test_eight_concurrent_clients_get_the_rows_predict_writes(single_server, photos, tmp_path):
    expected = predicted_rows(single_label_checkpoint(), photos, tmp_path)
    requests = [photos[index % len(photos)] for index in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda path: post_files(single_server, [path]), requests))
    for path, (status, body) in zip(requests, answers):
        assert status == 200, body
        [prediction] = body["predictions"]
        row = expected[path.name]
        assert prediction["name"] == path.name and prediction["labels"] == row["labels"]
        assert prediction["scores"] == pytest.approx(row["probabilities"], abs=1e-5)
    stats = json.loads(get(single_server, "health")[1])
    assert stats["images"] >= 24 and stats["batches"] < stats["images"]  # some requests shared a batch


def test_several_files_and_base64_json_answer_in_order(single_server, photos, tmp_path):
    expected = predicted_rows(single_label_checkpoint(), photos[:3], tmp_path)
    status, body = post_files(single_server, photos[:3])
    assert status == 200 and [p["name"] for p in body["predictions"]] == [p.name for p in photos[:3]]
    encoded = base64.b64encode(photos[1].read_bytes()).decode()
    for document in ({"image": encoded}, {"images": [f"data:image/png;base64,{encoded}"]}):
        status, body = post(single_server, json.dumps(document).encode(), "application/json", "predict?top_k=2")
        assert status == 200, body
        assert body["predictions"][0]["labels"] == expected[photos[1].name]["labels"][:2]


def test_multi_label_answers_hold_the_tags_above_their_thresholds(multi_server, photos, tmp_path):
    expected = predicted_rows(multi_label_checkpoint(), photos, tmp_path)
    thresholds = json.loads(get(multi_server, "info")[1])["thresholds"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda path: post_files(multi_server, [path]), photos))
    assert any(body["predictions"][0]["labels"] for _, body in answers)
    for path, (status, body) in zip(photos, answers):
        assert status == 200, body
        [prediction] = body["predictions"]
        assert prediction["labels"] == expected[path.name]["tags"]
        assert prediction["scores"] == pytest.approx(expected[path.name]["scores"], abs=1e-5)
        assert prediction["thresholds"] == [thresholds[tag] for tag in prediction["labels"]]
        assert all(score > threshold for score, threshold in zip(prediction["scores"], prediction["thresholds"]))


def _bad_payloads(photo: bytes) -> dict[str, tuple[bytes, str, int, str]]:
    """name → (body, content type, expected status, a phrase the error must contain)."""
    return {
        "not an image": (*multipart([("image", "notes.txt", b"just some text")]), 400, "not an image"),
        "truncated image": (*multipart([("image", "cut.png", photo[: len(photo) // 3])]), 400, "Cannot read image"),
        "wrong field": (*multipart([("file", "a.png", photo)]), 400, 'field named "image"'),
        "bad base64": (b'{"image": "not*base64"}', "application/json", 400, "base64"),
        "not JSON": (b"{image:", "application/json", 400, "not valid JSON"),
        "wrong JSON key": (b'{"picture": "AAAA"}', "application/json", 400, '"image"'),
        "wrong content type": (photo, "image/png", 415, "multipart/form-data"),
        "oversized upload": (*multipart([("image", "big.png", b"\0" * (UPLOAD_CAP_MB << 21))]), 413, "at most"),
    }


@pytest.mark.parametrize("case", list(_bad_payloads(b"")))
def test_a_bad_payload_gets_a_4xx_json_error(single_server, photos, case):
    body, content_type, expected_status, phrase = _bad_payloads(photos[0].read_bytes())[case]
    status, answer = post(single_server, body, content_type)
    assert status == expected_status and phrase in answer["error"] and "Fix" in answer["error"], answer
    assert "Traceback" not in answer["error"]


def test_an_oversized_chunked_upload_is_cut_off_at_the_cap(single_server):
    parts = urlsplit(single_server)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    chunks = (b"\0" * (64 << 10) for _ in range(64))  # 4 MiB in all, no Content-Length
    connection.request("POST", "/predict", body=chunks, encode_chunked=True,
                       headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    response = connection.getresponse()
    assert response.status == 413 and "at most" in json.loads(response.read())["error"]
    connection.close()


def test_clients_that_disconnect_mid_request_do_not_break_the_server(single_server, photos):
    parts = urlsplit(single_server)
    body, content_type = multipart([("image", "a.png", photos[0].read_bytes())])
    for whole in (False, True):  # gone mid-body; gone after the whole request, before the answer
        with socket.create_connection((parts.hostname, parts.port)) as sock:
            head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            sock.sendall(head + (body if whole else body[: len(body) // 2]))
    status, answer = post_files(single_server, photos[:1])
    assert status == 200 and answer["predictions"][0]["name"] == photos[0].name
    assert get(single_server, "health")[0] == 200


def test_past_the_request_timeout_the_answer_is_504_json(photos):
    settings = ServeSettings(port=0, access_log=False, request_timeout=1e-4)
    with BackgroundServer(single_label_checkpoint(), settings) as server:
        status, answer = post_files(server.url, photos[:1])
        assert status == 504 and "request-timeout" in answer["error"]
        assert get(server.url, "health")[0] == 200  # the worker went on


def test_a_full_queue_refuses_instead_of_growing():
    queue = BatchQueue([object()], max_batch_size=2, batch_timeout=0.0, max_queue=3)  # workers not started
    queue.submit([torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2)
    with pytest.raises(QueueFullError, match="2 images are waiting"):
        queue.submit([torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2)  # all or nothing
    assert queue.waiting == 2 and queue.stats.refused == 2


def test_startup_errors_are_one_line(caplog, tmp_path, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert "already in use" in error_line(caplog, ["serve", str(single_label_checkpoint()), "--port", str(port)])
    assert "none.ckpt" in error_line(caplog, ["serve", str(tmp_path / "none.ckpt"), "--port", "0"])
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the serve extra were not installed
    assert 'pip install "tresnet-ft[serve]"' in error_line(caplog, ["serve", "model.ckpt"])
