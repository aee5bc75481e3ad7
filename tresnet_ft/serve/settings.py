"""The knobs of ``tresnet-ft serve``, one value object shared by the command line, the server and the app."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidValueError


@dataclass(frozen=True)
class ServeSettings:
    """How the server listens, batches and guards itself. The defaults suit one CPU machine."""

    host: str = "127.0.0.1"  # loopback only; 0.0.0.0 to accept other machines
    port: int = 8000  # 0: any free port (the log line says which)
    runtime: str = "auto"  # passed to open_runtime
    device: str | None = None  # None: CUDA when available, else the CPU
    max_batch_size: int = 8  # images in one forward pass
    batch_timeout: float = 0.0  # s to wait after an image for more to batch with it (0: what is waiting)
    workers: int = 1  # model copies, each in its own batching thread
    max_queue: int = 64  # images that may wait; beyond: 503
    request_timeout: float = 30.0  # s from arrival to answer; beyond: 504
    max_upload_bytes: int = 20 << 20  # request body, checked while it arrives; beyond: 413
    max_images: int = 16  # images in one request
    top_k: int = 5  # single-label answers; a request may ask ?top_k=N
    access_log: bool = True  # one log line per request (uvicorn's)

    def __post_init__(self) -> None:
        positive = {"max_batch_size": self.max_batch_size, "workers": self.workers, "max_queue": self.max_queue,
                    "max_upload_bytes": self.max_upload_bytes, "max_images": self.max_images, "top_k": self.top_k,
                    "request_timeout": self.request_timeout}
        for name, value in positive.items():
            if not value > 0:
                raise InvalidValueError(f"Expected {name} to be positive, but got {value}.")
        if self.batch_timeout < 0:
            raise InvalidValueError(f"Expected batch_timeout to be at least 0 seconds, but got {self.batch_timeout}.")
        if not 0 <= self.port <= 65535:
            raise InvalidValueError(f"Expected port to be in 0..65535 (0: any free port), but got {self.port}.")
        if self.max_images > self.max_queue:
            raise InvalidValueError(f"Expected max_images ({self.max_images}) to be at most max_queue "
                                    f"({self.max_queue}): a request that large could never be queued.")
