"""``tresnet-ft serve MODEL``: the HTTP server and web page of :mod:`tresnet_ft.serve`."""
from __future__ import annotations

import argparse

from ..fetch.packages import import_package

_DESCRIPTION = """\
Serve a trained classifier over HTTP, with a web page at / (drop an image, see the predictions).

  POST /predict   multipart field "image" (one or more files):  curl -F image=@cat.jpg URL/predict
                  or JSON {"image": "<base64>"} / {"images": [...]}; ?top_k=N for single-label
                  answer: {"task": ..., "predictions": [{"name", "labels", "scores"[, "thresholds"]}]}
  GET  /health    200 {"status": "ok", ...} while the batch workers run
  GET  /info      task, classes, input size, runtime, multi-label thresholds

Concurrent requests are batched together (--max-batch-size, --batch-timeout); a full queue answers
503, a request past --request-timeout 504, a bad upload 4xx, always as JSON {"error": "..."}.
"""
_SERVE_EXTRA = '"tresnet-ft[serve]"'


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` on ``sub``."""
    from ..serve.settings import ServeSettings

    defaults = ServeSettings()
    parser = sub.add_parser("serve", help="serve a classifier over HTTP with a web page (needs tresnet-ft[serve])",
                            description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a checkpoint (best.ckpt), an exported .onnx, or a hub model folder")
    parser.add_argument("--host", default=defaults.host,
                        help="address to listen on; 0.0.0.0 for other machines (default: %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="0: any free port (default: %(default)s)")
    parser.add_argument("--runtime", default=defaults.runtime,
                        help="auto, torch or onnxruntime, as for predict (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                        help="most images in one forward pass (default: %(default)s)")
    parser.add_argument("--batch-timeout", type=float, default=defaults.batch_timeout,
                        help="seconds to wait after an image for others to batch with it; 0 takes what is "
                             "already waiting (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="model copies, each batching in its own thread (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help="images that may wait; more get 503 (default: %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout,
                        help="seconds before a request gets 504 (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / (1 << 20),
                        help="largest request body in MiB, checked while it arrives (default: %(default)g)")
    parser.add_argument("--max-images", type=int, default=defaults.max_images,
                        help="images in one request (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=defaults.top_k,
                        help="single-label: classes per answer (default: %(default)s)")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false", help="no line per request")
    parser.set_defaults(run=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    for module, pip_name in (("fastapi", _SERVE_EXTRA), ("uvicorn", _SERVE_EXTRA), ("python_multipart", _SERVE_EXTRA)):
        import_package(module, "tresnet-ft serve", pip_name=pip_name)
    from ..serve import ServeSettings, serve

    settings = ServeSettings(
        host=args.host, port=args.port, runtime=args.runtime, device=args.device,
        max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, workers=args.workers,
        max_queue=args.max_queue, request_timeout=args.request_timeout,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_images=args.max_images, top_k=args.top_k,
        access_log=args.access_log)
    serve(args.model, settings)  # logs the URL; returns on Ctrl+C or SIGTERM
    return 0
