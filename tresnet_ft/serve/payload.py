"""Read the images out of a ``POST /predict`` request, with the body size checked while it arrives.

Two request shapes (the README's "Serve" section shows both with curl):

* ``multipart/form-data``: one or more file parts named ``image`` (``curl -F image=@cat.jpg``).
* ``application/json``: ``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}``; a
  ``data:image/...;base64,`` prefix (what a browser's ``FileReader`` gives) is accepted.

Every mistake is an :class:`~starlette.exceptions.HTTPException` with a 4xx status and a message
saying what was expected, what arrived and the fix; the app renders it as ``{"error": message}``.
The body is never buffered past ``max_bytes``: a ``Content-Length`` above it is refused before a
byte is read, and a body that grows past it (chunked, or a lying header) is cut off at the limit.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

FIELD = "image"  # the multipart field, and the JSON key for one image
JSON_LIST_FIELD = "images"  # the JSON key for several
_SHAPES = ('multipart/form-data with file field "image" (curl -F image=@photo.jpg), or application/json '
           '{"image": "<base64>"}')


@dataclass(frozen=True)
class Upload:
    """One image as it arrived: a name for answers and messages (the file name, or ``image[i]``) and its bytes."""

    name: str
    data: bytes


async def read_uploads(request: Request, max_bytes: int, max_images: int) -> list[Upload]:
    """The images of ``request`` in order (1..``max_images``), each ``Upload.data`` still encoded.

    Raises:
        HTTPException: 413 for a body above ``max_bytes``; 415 for another content type; 400 for a
            missing or misnamed field, malformed multipart or JSON, bad base64, too many images.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(f"{int(declared):,} bytes", max_bytes)
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    body = _capped(request.stream(), max_bytes)
    if media_type == "multipart/form-data":
        uploads = await _multipart_uploads(request, body, max_images)
    elif media_type == "application/json":
        uploads = _json_uploads(b"".join([chunk async for chunk in body]))
    else:
        raise HTTPException(415, f"Expected {_SHAPES}, but got Content-Type {content_type or '(none)'!r}. "
                                 "Fix: send the image as a multipart upload or as base64 JSON.")
    if len(uploads) > max_images:
        raise HTTPException(400, f"Expected at most {max_images} images in one request, but got {len(uploads)}. "
                                 "Fix: split them over several requests.")
    return uploads


async def _capped(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """``stream``'s chunks, stopping with 413 as soon as they add up to more than ``max_bytes``."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(f"more than {max_bytes:,} bytes", max_bytes)
        yield chunk


def _too_large(what: str, max_bytes: int) -> HTTPException:
    return HTTPException(413, f"Expected a request body of at most {max_bytes:,} bytes, but got {what}. "
                              "Fix: send a smaller image (resize it first), or start the server with a larger "
                              "--max-upload-mb.")


async def _multipart_uploads(request: Request, body: AsyncIterator[bytes], max_images: int) -> list[Upload]:
    # max_files one above the limit, so that "too many" gets our message rather than the parser's
    parser = MultiPartParser(request.headers, body, max_files=max_images + 1, max_fields=32)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise HTTPException(400, f"Expected a well-formed multipart body, but it could not be parsed "
                                 f"({error.message}). Fix: let your HTTP client build it (curl -F image=@photo.jpg)."
                            ) from None
    try:
        parts = form.getlist(FIELD)
        if not parts:
            raise HTTPException(400, f'Expected a file field named "{FIELD}", but got fields '
                                     f"{sorted(set(form.keys())) or '(none)'}. Fix: curl -F image=@photo.jpg ...")
        uploads = []
        for index, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise HTTPException(400, f'Expected field "{FIELD}" to be a file upload, but got a text value. '
                                         "Fix: curl -F image=@photo.jpg (with the @).")
            uploads.append(Upload(part.filename or f"{FIELD}[{index}]", await part.read()))
        return uploads
    finally:
        await form.close()


def _json_uploads(body: bytes) -> list[Upload]:
    try:
        document: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HTTPException(400, f"Expected a JSON body, but it is not valid JSON ({error}). Fix: send "
                                 '{"image": "<base64 of the image file>"}.') from None
    if isinstance(document, dict) and isinstance(document.get(FIELD), str):
        encoded = [document[FIELD]]
    elif isinstance(document, dict) and isinstance(document.get(JSON_LIST_FIELD), list) and document[JSON_LIST_FIELD]:
        encoded = document[JSON_LIST_FIELD]
    else:
        keys = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise HTTPException(400, f'Expected a JSON object with "{FIELD}": "<base64>" or "{JSON_LIST_FIELD}": '
                                 f'["<base64>", ...], but got {keys}. Fix: {{"image": "<base64 of the file>"}}.')
    return [Upload(f"{FIELD}[{index}]", _base64_bytes(text, index)) for index, text in enumerate(encoded)]


def _base64_bytes(text: Any, index: int) -> bytes:
    if not isinstance(text, str):
        raise HTTPException(400, f"Expected image {index} to be a base64 string, but got {type(text).__name__}.")
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise HTTPException(400, f"Expected image {index} to be standard base64 (A-Z a-z 0-9 + / and = padding), "
                                 f"but it is not ({error}). Fix: base64 -w0 photo.jpg, or base64.b64encode(data) "
                                 "in Python.") from None
