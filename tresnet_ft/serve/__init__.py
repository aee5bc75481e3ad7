"""``tresnet-ft serve``: a trained classifier over HTTP, with a web page at ``/``.

Built on FastAPI and uvicorn, with our own dynamic batching (:mod:`.batcher`). LitServe was the first
candidate (it batches and runs workers); version 0.2.19 was tried and set aside because:

* it parses the request body itself before any of our code runs, so malformed JSON became a
  500, and a body size cap can only count bytes in a middleware;
* SIGTERM (what ``docker stop`` and systemd send) to its main process left its request-queue
  manager, HTTP server and inference worker processes running and holding the port;
* its own ``GET /`` answer, a host whitelist, an unbounded request queue and a ``client.py``
  written into the working folder on every start all had to be worked around;
* every request crossed two process boundaries (HTTP process → queue manager → inference
  process) and each worker process reloads the model: four processes for one model on 2 cores.

Here one process holds uvicorn's event loop and the batching threads: decoding runs in a thread
pool (OpenCV releases the GIL) and each batch uses every core.

Example:
    >>> with BackgroundServer("runs/flowers/checkpoints/best.ckpt") as server:   # doctest: +SKIP
    ...     print(server.url)
    http://127.0.0.1:40211/
"""
from typing import Any

from .settings import ServeSettings

__all__ = ["BackgroundServer", "ServeSettings", "bind_socket", "serve"]


def __getattr__(name: str) -> Any:
    # The server needs the optional fastapi/uvicorn; `tresnet-ft --help` and the settings do not.
    if name in ("BackgroundServer", "bind_socket", "serve"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
