"""What stands between the network and the dashboard's handlers (issue 15, finding 6).

The dashboard runs in the same process as the DICOM node, so a request must
not be able to make it read (or hold) a large body before it is authorised:

- the token is checked before any body byte is read. An ``Authorization:
  Bearer`` header is checked from the headers alone; a ``token`` form field
  (the HTML forms) is only looked for in a form body declared no larger than
  ``[web] max_form_bytes``; anything else without a valid header is refused
  401 unread, and the connection is closed so the rest is never read;
- form bodies are read up to ``max_form_bytes`` (413 beyond), uploads are
  streamed to a temporary file under ``<data_dir>/uploads`` up to
  ``max_upload_bytes`` (413 beyond, the partial file removed);
- every response carries the security headers in :data:`SECURITY_HEADERS`.
"""

from __future__ import annotations

import hmac
import logging
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import HTTPException, Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.config import WebSettings

__all__ = [
    "CLOSE",
    "FORM_TYPE",
    "SECURITY_HEADERS",
    "SecurityHeaders",
    "authenticate",
    "clear_uploads",
    "is_form",
    "read_form",
    "receive_upload",
]

logger = logging.getLogger(__name__)

FORM_TYPE = "application/x-www-form-urlencoded"
#: On a refusal sent before the body was read: uvicorn then closes instead of draining the body.
CLOSE = {"Connection": "close"}
#: Sent with every response. Pages are server-rendered with one inline stylesheet and no script.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
UPLOAD_PREFIX = "upload-"
SPACE_CHECK_BYTES = 16 << 20


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response (errors included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _declared_length(request: Request) -> int | None:
    """The Content-Length header (uvicorn/h11 has already refused a malformed one); None when chunked."""
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def is_form(request: Request) -> bool:
    """Whether the body is declared ``application/x-www-form-urlencoded``."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM_TYPE


def _token_matches(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def _unauthorised(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer", **CLOSE})


async def read_form(request: Request, limit: int) -> dict[str, str]:
    """A form body as a dict (first value of each field), read at most ``limit`` bytes; 413 beyond."""
    if not is_form(request):
        return {}
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise HTTPException(413, f"form body of {declared} bytes is larger than [web] max_form_bytes = {limit}",
                            headers=CLOSE)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"form body is larger than [web] max_form_bytes = {limit}", headers=CLOSE)
    return {key: values[0] for key, values in parse_qs(body.decode("utf-8", errors="replace")).items()}


async def authenticate(settings: WebSettings, request: Request) -> tuple[str, dict[str, str]]:
    """``(actor, form fields)`` for a request carrying the token; 401/403 before any body byte is read.

    A Bearer header is checked first, from the headers alone. Without one, the token
    may only come in a form body declared at most ``max_form_bytes`` long.
    """
    expected = settings.token
    if not expected:
        raise HTTPException(403, "changes are disabled: no [web] token is configured", headers=CLOSE)
    client = request.client.host if request.client else "unknown"
    header = request.headers.get("authorization", "")
    if header:
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not _token_matches(given, expected):
            raise _unauthorised("a valid token is required for changes")
        return f"web:{client}", await read_form(request, settings.max_form_bytes)
    declared = _declared_length(request)
    if not is_form(request) or declared is None or declared > settings.max_form_bytes:
        raise _unauthorised(
            "a valid token is required for changes: an Authorization: Bearer header, or a token field in a form "
            f"body of at most {settings.max_form_bytes} bytes with a Content-Length"
        )
    form = await read_form(request, settings.max_form_bytes)
    if not _token_matches(form.get("token", ""), expected):
        raise _unauthorised("a valid token is required for changes")
    return f"web:{client}", form


def _uploads_dir(data_dir: Path) -> Path:
    path = data_dir / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def clear_uploads(data_dir: Path) -> None:
    """Remove uploads a previous process left behind (it stopped while receiving or installing)."""
    directory = data_dir / "uploads"
    if not directory.is_dir():
        return
    for entry in directory.glob(f"{UPLOAD_PREFIX}*"):
        entry.unlink(missing_ok=True)


def _check_space(directory: Path, coming: int, keep_free: int) -> None:
    """507 when writing ``coming`` more bytes would leave less than ``keep_free`` (the node's floor)."""
    free = shutil.disk_usage(directory).free
    if free - coming < keep_free:
        raise HTTPException(507, f"not enough free disk for the upload: {free} bytes free, the node keeps "
                                 f"[node] min_free_bytes = {keep_free}", headers=CLOSE)


async def receive_upload(request: Request, data_dir: Path, limit: int, keep_free: int = 0) -> Path:
    """Stream the request body to a new file under ``<data_dir>/uploads``; 413 (nothing left) beyond ``limit``.

    Refused with 507 when it would take the disk below ``keep_free`` bytes (checked
    up front from Content-Length and every 16 MiB). The caller removes the file.
    """
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise HTTPException(413, f"upload of {declared} bytes is larger than [web] max_upload_bytes = {limit}",
                            headers=CLOSE)
    directory = _uploads_dir(data_dir)
    _check_space(directory, declared or 0, keep_free)
    fd, name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=".tar", dir=directory)
    path, size, checked = Path(name), 0, 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"upload is larger than [web] max_upload_bytes = {limit}",
                                        headers=CLOSE)
                if size - checked >= SPACE_CHECK_BYTES:
                    _check_space(directory, 0, keep_free)
                    checked = size
                out.write(chunk)
        if size == 0:
            raise HTTPException(400, "the body must be a bundle .tar; it is empty")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    logger.info("received an upload of %d bytes", size)
    return path
