"""An incremental ``multipart/related`` body parser (RFC 2046 5.1, RFC 2387), for STOW-RS request bodies.

:class:`MultipartReader` is fed the body chunk by chunk as it arrives and
hands each part's headers and bytes to callbacks as soon as they are known to
precede the next delimiter; it holds at most one chunk plus a delimiter's
length, whatever the size of a part. The body must end with the close
delimiter (``--boundary--``): :meth:`MultipartReader.close` refuses a body cut
off before it (:class:`MultipartError`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from dicom_node.errors import NodeError

__all__ = ["MultipartError", "MultipartReader", "content_type_params"]

#: longest header block of one part
MAX_PART_HEADERS = 16 * 1024
#: RFC 2046 5.1.1 allows 1 to 70 characters; longer ones are accepted, as real senders use them
#: (Orthanc 1.10's DICOMweb plugin sends 73)
MAX_BOUNDARY = 200
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,%d}[0-9A-Za-z'()+_,\-./:=?]" % (MAX_BOUNDARY - 1))
_PARAM = re.compile(r';\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


class MultipartError(NodeError):
    """The body is not a well-formed ``multipart/related`` body (or ends before its close delimiter)."""


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    """The media type (lower case) and its parameters (names lower case, quotes removed) of a Content-Type."""
    media_type, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for name, raw in _PARAM.findall(";" + rest):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name.lower()] = raw
    return media_type.strip().lower(), params


def check_boundary(boundary: str) -> bytes:
    """The boundary as bytes, or :class:`MultipartError` naming it when RFC 2046 forbids it."""
    if not _BOUNDARY.fullmatch(boundary):
        raise MultipartError(
            f"multipart boundary {boundary[:80]!r} is not 1-{MAX_BOUNDARY} allowed characters (RFC 2046 5.1.1)")
    return boundary.encode("ascii")


_PREAMBLE, _HEADERS, _BODY, _AFTER_DELIMITER, _EPILOGUE = range(5)


class MultipartReader:
    """Push parser: :meth:`feed` chunks, then :meth:`close`.

    ``on_part(headers)`` starts a part (header names lower case), ``on_data(bytes)``
    gives its next bytes, ``on_end()`` ends it. An exception from a callback
    propagates out of :meth:`feed`.
    """

    def __init__(
        self,
        boundary: str,
        on_part: Callable[[dict[str, str]], None],
        on_data: Callable[[bytes], None],
        on_end: Callable[[], None],
    ) -> None:
        self._dash_boundary = b"--" + check_boundary(boundary)
        self._delimiter = b"\r\n" + self._dash_boundary
        self._on_part, self._on_data, self._on_end = on_part, on_data, on_end
        self._buffer = bytearray(b"\r\n")  # so a body starting with the dash-boundary finds a delimiter
        self._state = _PREAMBLE
        self.parts = 0

    @property
    def complete(self) -> bool:
        """Whether the close delimiter has been read."""
        return self._state == _EPILOGUE

    def feed(self, chunk: bytes) -> None:
        """Parse the next bytes of the body."""
        if self._state == _EPILOGUE:
            return  # RFC 2046: the epilogue is ignored
        self._buffer += chunk
        while self._step():
            pass

    def close(self) -> None:
        """The body ended: refuse it unless the close delimiter was read."""
        if self._state != _EPILOGUE:
            raise MultipartError("multipart body ends before its close delimiter (truncated upload?)")

    def _step(self) -> bool:
        """Advance as far as the buffer allows; True when another step may progress."""
        buffer = self._buffer
        if self._state == _PREAMBLE:
            at = buffer.find(self._delimiter)
            if at < 0:
                del buffer[: max(0, len(buffer) - len(self._delimiter))]
                return False
            del buffer[: at + len(self._delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        if self._state == _AFTER_DELIMITER:
            return self._after_delimiter()
        if self._state == _HEADERS:
            return self._headers()
        if self._state == _BODY:
            return self._body()
        return False

    def _after_delimiter(self) -> bool:
        buffer = self._buffer
        if len(buffer) < 2:
            return False
        if buffer[:2] == b"--":
            self._state = _EPILOGUE
            buffer.clear()
            return False
        end = buffer.find(b"\r\n")  # transport padding (linear white space) may precede the CRLF
        if end < 0:
            if len(buffer) > 1024:
                raise MultipartError("multipart delimiter is not followed by CRLF")
            return False
        if buffer[:end].strip(b" \t"):
            raise MultipartError("multipart delimiter is followed by unexpected characters")
        del buffer[: end + 2]
        self._state = _HEADERS
        return True

    def _headers(self) -> bool:
        buffer = self._buffer
        if buffer[:2] == b"\r\n":  # a part without headers
            block, consumed = b"", 2
        else:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_PART_HEADERS:
                    raise MultipartError(f"a part's headers exceed {MAX_PART_HEADERS} bytes")
                return False
            block, consumed = bytes(buffer[:end]), end + 4
        headers: dict[str, str] = {}
        for line in block.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise MultipartError(f"malformed part header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        del buffer[:consumed]
        self._state = _BODY
        self.parts += 1
        self._on_part(headers)
        return True

    def _body(self) -> bool:
        buffer = self._buffer
        at = buffer.find(self._delimiter)
        if at < 0:
            keep = len(self._delimiter) - 1  # a delimiter may begin in these bytes
            if len(buffer) > keep:
                data = bytes(buffer[: len(buffer) - keep])
                del buffer[: len(data)]
                self._on_data(data)
            return False
        data = bytes(buffer[:at])
        del buffer[: at + len(self._delimiter)]
        if data:
            self._on_data(data)
        self._state = _AFTER_DELIMITER
        self._on_end()
        return True
