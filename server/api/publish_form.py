"""The publish form, read as it streams: the ``spec`` part is decided on before the ``data`` part is read.

``request.form()`` reads (and spools to disk) the whole body before the route sees a field, so a publish to
another owner's task used to read its 200 MB before its 403. Here the multipart stream is parsed chunk by chunk
(python-multipart's push parser); as soon as the ``spec`` part is complete, ``on_spec`` runs (the ownership and
spec checks), and only then is the data part taken in — in memory, capped by ``limit`` while it streams.
Clients send the spec first (plada-client and httpx do: form fields before files); a body whose data part
comes first is read before the decision, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from plada.shared.errors import PayloadTooLargeError

MAX_SPEC_BYTES = 4 << 20  # a spec is at most 1M characters (publishing.MAX_SPEC_CHARS), 4 bytes each in UTF-8


def form_error(field: str, msg: str) -> RequestValidationError:
    """The same 422 ``validation_error`` FastAPI gives for a malformed request."""
    return RequestValidationError([{"loc": ("body", field), "msg": msg, "type": "value_error"}])


class _Parts:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fields: dict[str, list[bytes]] = {}
        self.sizes: dict[str, int] = {}
        self.filename = ""
        self.done: list[str] = []
        self._name = ""
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self.error: Exception | None = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._add("_header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _begin(self) -> None:
        self._headers, self._name = {}, ""

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _kind, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode("utf-8", "replace")
        if self._name in self.fields:
            self.error = form_error("body", f"the form has the field {self._name!r} twice")
        elif len(self.fields) >= 2:
            self.error = form_error("body", "not a valid multipart form: too many fields (spec and data only)")
        self.fields[self._name] = []
        self.sizes[self._name] = 0
        if self._name == "data":
            self.filename = opts.get(b"filename", b"").decode("utf-8", "replace")

    def _data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        self.sizes[self._name] = self.sizes.get(self._name, 0) + n
        cap = self.limit if self._name == "data" else MAX_SPEC_BYTES
        if self.sizes[self._name] > cap:
            self.error = PayloadTooLargeError(
                f"upload exceeds {self.limit} bytes (PLADA_MAX_UPLOAD_BYTES)"
                if self._name == "data"
                else f"form field {self._name[:40]!r} is over {MAX_SPEC_BYTES:,} bytes"
            )
            return
        self.fields.setdefault(self._name, []).append(data[start:end])

    def _end(self) -> None:
        self.done.append(self._name)


async def read_publish_form(
    request: Request, limit: int, on_spec: Callable[[str], Awaitable[None]]
) -> tuple[str, str, bytes]:
    """(spec JSON, file name, data bytes); ``on_spec(spec)`` runs (and may raise) once the spec part is in."""
    _kind, opts = parse_options_header(request.headers.get("content-type", ""))
    boundary = opts.get(b"boundary")
    if _kind != b"multipart/form-data" or not boundary:
        raise form_error("body", "not a valid multipart form: the body must be multipart/form-data with a boundary")
    parts = _Parts(limit)
    parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
    checked = False
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if parts.error is not None:
                raise parts.error
            if not checked and "spec" in parts.done:
                checked = True
                await on_spec(b"".join(parts.fields["spec"]).decode("utf-8", "replace"))
        parser.finalize()
    except MultipartParseError as exc:
        raise form_error("body", f"not a valid multipart form: {exc}") from exc
    if parts.error is not None:
        raise parts.error
    if "spec" not in parts.done:
        raise form_error("spec", "Field required (text: the TaskSpec as JSON)")
    if "data" not in parts.done or not parts.filename:
        raise form_error("data", "Field required (a file: .npz or .zip)")
    spec = b"".join(parts.fields["spec"]).decode("utf-8", "replace")
    if not checked:
        await on_spec(spec)
    return spec, parts.filename, b"".join(parts.fields["data"])
