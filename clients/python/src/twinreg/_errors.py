"""The exceptions of the twinreg client.

Two kinds of failure, two classes:

* :class:`TwinregError` — twinreg (or something in front of it) answered with a status that is
  not 2xx. It carries twinreg's error ``code`` (``"invalid_request"``, ``"forbidden"``,
  ``"unknown_instance"``, ...), the ``field`` at fault, the ``message``, the HTTP ``status``,
  ``retry_after`` and ``registries``. Each code of the contract has a subclass
  (:class:`UnknownInstanceError`, ...), so ``except`` can pick one.
* :class:`TransportError` — no usable answer: connection refused or reset, TLS failure,
  timeout, or a 2xx answer whose body is not the JSON object the API promises. Retrying may help.

Both derive from :class:`Error`; :class:`ConfigurationError` is raised when a client cannot be
built at all (bad URL, unreadable certificate).
"""

from __future__ import annotations

import email.utils
import socket
import ssl
import time
from typing import Any, Dict, Optional

# The longest Retry-After honoured, in seconds (twinreg sends 1-4).
RETRY_AFTER_CAP = 300.0


class Error(Exception):
    """The base of every exception this package raises."""


class ConfigurationError(Error, ValueError):
    """A client that cannot be built: a URL that is not ``https://host[:port]``, or a
    certificate, key or CA bundle that cannot be loaded (the message names the files, never
    their contents)."""


class TransportError(Error):
    """The request got no usable answer from twinreg; retrying may help.

    ``operation`` names what was attempted (``"heartbeat orders/ord-1"``), ``cause`` is the
    underlying exception (``OSError``, ``ssl.SSLError``, ``http.client.HTTPException``) or
    ``None`` for an answer that could not be read as the API promises.
    """

    def __init__(self, operation: str, cause: Optional[BaseException] = None,
                 detail: Optional[str] = None):
        self.operation = operation
        self.cause = cause
        self.detail = detail if detail is not None else describe(cause)
        super().__init__(f"{operation}: {self.detail}")


class TwinregError(Error):
    """A non-2xx answer, with twinreg's error code and field.

    Attributes:
        status: the HTTP status (400, 403, 404, 429, 503, ...).
        code: twinreg's error code (``"invalid_request"``, ``"forbidden"``,
            ``"unknown_instance"``, ``"not_found"``, ``"payload_too_large"``,
            ``"unavailable"``, ``"rate_limited"``, ``"request_timeout"``); ``None`` when the
            answer carried no twinreg error body (e.g. a proxy's 502 page).
        field: the request field at fault, for ``invalid_request`` (``"port"``,
            ``"service"``, ...); else ``None``.
        message: twinreg's explanation, for a person.
        retry_after: seconds from the ``Retry-After`` header (429, 503), else ``None``.
        registries: each registry's outcome (503 and ``unknown_instance`` answers), else ``None``.
        operation: what was attempted, e.g. ``"register orders/ord-1"``.
        body: the decoded JSON body, or ``None``.
    """

    def __init__(self, operation: str, status: int, code: Optional[str], message: str = "",
                 field: Optional[str] = None, retry_after: Optional[float] = None,
                 registries: Optional[Dict[str, Any]] = None,
                 body: Optional[Dict[str, Any]] = None):
        self.operation = operation
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.registries = registries
        self.body = body
        super().__init__(self._describe())

    def _describe(self) -> str:
        head = self.code if self.code else "no twinreg error code"
        if self.field:
            head += f" (field {self.field})"
        if self.message:
            head += f": {self.message}"
        tail = f"HTTP {self.status}"
        if self.retry_after is not None:
            tail += f", retry after {self.retry_after:g}s"
        return f"{self.operation}: {head} [{tail}]"

    def __str__(self) -> str:
        return self._describe()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
                f"field={self.field!r}, message={self.message!r})")

    @property
    def permanent(self) -> bool:
        """A refusal retrying cannot fix: a bad request, a forbidden write, a body too large,
        an endpoint that does not exist (a wrong URL prefix)."""
        return self.status in (400, 403, 405, 413) or self.code == "not_found"

    @property
    def retryable(self) -> bool:
        """A failure that may pass: 429 ``rate_limited``, 503 ``unavailable`` (both with
        ``Retry-After``), 408 and other server-side errors."""
        return self.status in (408, 429) or self.status >= 500

    @classmethod
    def from_answer(cls, operation: str, status: int, body: Any,
                    retry_after_header: Optional[str] = None) -> "TwinregError":
        """The error for an answer with `status` and decoded JSON `body` (anything: a body that
        is not a twinreg error object gives ``code`` ``None``), as the subclass for its code."""
        obj = body if isinstance(body, dict) else None
        code = _str_or_none(obj.get("error")) if obj else None
        message = (_str_or_none(obj.get("message")) or "") if obj else ""
        field = _str_or_none(obj.get("field")) if obj else None
        registries = obj.get("registries") if obj else None
        if not isinstance(registries, dict):
            registries = None
        klass = _BY_CODE.get(code or "", cls)
        return klass(operation, status, code, message, field,
                     parse_retry_after(retry_after_header), registries, obj)


class InvalidRequestError(TwinregError):
    """400 ``invalid_request``: ``field`` names what is wrong. Nothing was written."""


class ForbiddenError(TwinregError):
    """403 ``forbidden``: the client certificate may not write (or read) this service."""


class UnknownInstanceError(TwinregError):
    """404 ``unknown_instance``: no registry knows the instance; register it again."""


class NotFoundError(TwinregError):
    """404 ``not_found``: no such endpoint (check the URL's path prefix)."""


class PayloadTooLargeError(TwinregError):
    """413 ``payload_too_large``: the body is over 64 KiB."""


class UnavailableError(TwinregError):
    """503 ``unavailable``: no registry could be reached; wait ``retry_after`` seconds."""


class RateLimitedError(TwinregError):
    """429 ``rate_limited``: this identity is over its request rate; wait ``retry_after``."""


class RequestTimeoutError(TwinregError):
    """408 ``request_timeout``: the request body did not arrive in time."""


_BY_CODE = {
    "invalid_request": InvalidRequestError,
    "forbidden": ForbiddenError,
    "unknown_instance": UnknownInstanceError,
    "not_found": NotFoundError,
    "payload_too_large": PayloadTooLargeError,
    "unavailable": UnavailableError,
    "rate_limited": RateLimitedError,
    "request_timeout": RequestTimeoutError,
}


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (what twinreg sends) or an
    HTTP date; ``None`` when absent or unreadable; at most :data:`RETRY_AFTER_CAP`."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, RETRY_AFTER_CAP))


def describe(err: Optional[BaseException]) -> str:
    """A short description of a transport failure, without secrets."""
    if err is None:
        return "no usable answer"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err.reason or err}"
    if isinstance(err, socket.timeout):
        return "timed out"
    text = str(err)
    name = type(err).__name__
    return f"{name}: {text}" if text else name
