"""Load the model, bind the port, run uvicorn: in the foreground (``tresnet-ft serve``) or in a
background thread (:class:`BackgroundServer`, for notebooks and tests).

The port is bound before the model loads, so a port in use fails in a second with one line; a model
that cannot load fails with the loader's own one-line error, before anything listens.
"""
from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from ..errors import InvalidValueError, UnavailableError
from ..inference.runtime import open_runtime
from .app import ServedModel, create_app
from .batcher import BatchQueue
from .settings import ServeSettings

log = logging.getLogger(__name__)


def serve(source: str | Path, settings: ServeSettings = ServeSettings()) -> None:
    """Serve ``source`` (a checkpoint, an exported model or a hub folder: whatever
    :func:`~tresnet_ft.inference.runtime.open_runtime` opens) until Ctrl+C or SIGTERM."""
    server, sock = _build(source, settings, uvicorn.config.LOGGING_CONFIG)
    with sock:
        server.run(sockets=[sock])


class BackgroundServer:
    """``serve`` in a daemon thread, as a context manager: ``with BackgroundServer(ckpt) as s: s.url``.

    Real HTTP on a real socket (``port=0`` by default: a free one); leaving the block shuts the
    server down and waits for it.
    """

    def __init__(self, source: str | Path, settings: ServeSettings = ServeSettings(port=0, access_log=False),
                 start_timeout: float = 60.0) -> None:
        self._server, self._socket = _build(source, settings, log_config=None)  # keep the caller's logging
        self.url = _url(settings.host, self._socket.getsockname()[1])
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="tresnet-ft-serve", daemon=True)
        self._start_timeout = start_timeout

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise UnavailableError(f"The server at {self.url} did not start within {self._start_timeout:g} s.")
            time.sleep(0.02)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._socket.close()


def _build(source: str | Path, settings: ServeSettings,
           log_config: dict[str, Any] | None) -> tuple[uvicorn.Server, socket.socket]:
    sock = bind_socket(settings.host, settings.port)
    try:
        runtimes = [open_runtime(source, settings.runtime, settings.device, settings.max_batch_size)
                    for _ in range(settings.workers)]
    except BaseException:
        sock.close()
        raise
    info = runtimes[0].info
    batcher = BatchQueue(runtimes, settings.max_batch_size, settings.batch_timeout, settings.max_queue)
    app = create_app(ServedModel(info, batcher, runtimes[0].name), settings)
    config = uvicorn.Config(app, log_level="info", access_log=settings.access_log, log_config=log_config,
                            timeout_graceful_shutdown=10)
    url = _url(settings.host, sock.getsockname()[1])
    log.info("Serving %s (%s, %d classes, %s on %s, %d worker(s), batches of up to %d) at %s  (Ctrl+C to stop)",
             Path(source).name, info.task, info.num_classes, runtimes[0].name, runtimes[0].device,
             settings.workers, settings.max_batch_size, url)
    return uvicorn.Server(config), sock


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises:
        UnavailableError: the port is in use or not allowed.
        InvalidValueError: ``host`` is not an address of this machine.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise InvalidValueError(f"Expected --host to be an address of this machine (127.0.0.1, 0.0.0.0, ::), "
                                f"but got {host!r} ({error.strerror}).") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart right after a stop (TIME_WAIT)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise UnavailableError(f"Port {port} on {host} is already in use (another server?). Fix: choose "
                                   f"another with --port, e.g. --port {port + 1}, or stop the other one.") from None
        raise UnavailableError(f"Cannot listen on {host}:{port} ({error.strerror}). Fix: a port from 1024 "
                               "up, and a --host of this machine.") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{shown}:{port}/"
