"""The synchronous REST client: one method per endpoint of docs/api.md, over mutual TLS, reusing
HTTP/1.1 keep-alive connections."""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ._backoff import Backoff, retry_delay
from ._errors import ConfigurationError, TransportError, TwinregError, describe
from ._version import __version__

__all__ = [
    "Client", "Registration", "Heartbeat", "Drained", "Instance", "Listing",
    "DEFAULT_TIMEOUT", "LONG_POLL_WAIT",
]

DEFAULT_TIMEOUT = 10.0  # seconds for one request (a long poll gets its wait on top)
LONG_POLL_WAIT = 30  # seconds twinreg may hold a watch's long poll
MAX_IDLE = 4  # idle keep-alive connections kept per client

log = logging.getLogger("twinreg")

# Errors on a reused keep-alive connection that mean the server had closed it while idle: the
# request never reached it, so it is sent again once on a new connection. (Every request of the
# API is idempotent, so even a request that did land may be repeated.)
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          ConnectionAbortedError, ssl.SSLEOFError, http.client.CannotSendRequest)


@dataclass(frozen=True)
class Registration:
    """A register's answer: the instance is in at least one registry."""
    service: str
    id: str
    ttl_seconds: int
    degraded: bool
    registries: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat's answer."""
    degraded: bool
    registries: Dict[str, Any] = field(default_factory=dict)

    @property
    def restored(self) -> List[str]:
        """The registries that had lost the instance and got it written back."""
        return sorted(name for name, r in self.registries.items()
                      if isinstance(r, dict) and r.get("restored"))


@dataclass(frozen=True)
class Drained:
    """A drain's or undrain's answer: ``drained`` is the instance's state now."""
    service: str
    id: str
    drained: bool
    degraded: bool
    registries: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance:
    """One instance of a list: the union of both registries, etcd's record winning."""
    id: str
    address: str
    port: int
    tags: Tuple[str, ...] = ()
    meta: Dict[str, str] = field(default_factory=dict)
    ttl_seconds: int = 0
    drained: bool = False
    sources: Tuple[str, ...] = ()

    @property
    def host_port(self) -> str:
        """``host:port``, an IPv6 host in brackets."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "Instance":
        return cls(
            id=str(obj.get("id", "")),
            address=str(obj.get("address", "")),
            port=_int(obj.get("port")),
            tags=tuple(str(t) for t in obj.get("tags") or ()),
            meta={str(k): str(v) for k, v in (obj.get("meta") or {}).items()},
            ttl_seconds=_int(obj.get("ttl_seconds")),
            drained=bool(obj.get("drained", False)),
            sources=tuple(str(s) for s in obj.get("sources") or ()),
        )


@dataclass(frozen=True)
class Listing:
    """A service's instances and the ``index`` of that set.

    The index is an opaque content hash of the set, not a counter: compare it for equality only,
    and send it back to long-poll for the next change. 0 means the answer carried no valid index.
    """
    index: int
    instances: Tuple[Instance, ...]
    service: str = ""
    registries: Dict[str, Any] = field(default_factory=dict)

    def ids(self) -> List[str]:
        return sorted(i.id for i in self.instances)

    def get(self, id: str) -> Optional[Instance]:
        for inst in self.instances:
            if inst.id == id:
                return inst
        return None

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "Listing":
        index = obj.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            index = 0
        items = obj.get("instances")
        if not isinstance(items, list):
            items = []
        instances = tuple(sorted((Instance.from_json(i) for i in items if isinstance(i, dict)),
                                 key=lambda i: i.id))
        return cls(index=index, instances=instances, service=str(obj.get("service", "")),
                   registries=_dict(obj.get("registries")))


class _Connection(http.client.HTTPSConnection):
    """An HTTPS connection that tells its client each time it connects."""

    def __init__(self, owner: "Client", *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._owner = owner

    def connect(self) -> None:
        super().connect()
        self._owner._connected()


class Client:
    """A twinreg client over mutual TLS.

    ``url`` is the gateway, ``https://host[:port]`` (a path prefix is kept). ``cert`` and
    ``key`` are the client certificate and its private key (PEM files), ``ca`` the CA bundle
    that signed the gateway's certificate (``None``: the system's trust store). ``timeout`` is
    the seconds one request may take. Instead of the three files, an ``ssl.SSLContext`` may be
    passed as ``context``.

    Thread-safe: each request takes an idle keep-alive connection (or opens one) and gives it
    back, so a heartbeat thread and a watch in another thread each get their own connection.
    Failures raise :class:`TwinregError` (twinreg answered with an error) or
    :class:`TransportError` (no usable answer). :meth:`close` closes every connection and ends
    requests in flight (a long poll in another thread then raises :class:`TransportError`).
    """

    def __init__(self, url: str, cert: Optional[str] = None, key: Optional[str] = None,
                 ca: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT, *,
                 context: Optional[ssl.SSLContext] = None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigurationError(f"the gateway URL must be https://host[:port], got {url!r}")
        try:
            port = parts.port or 443
        except ValueError as err:
            raise ConfigurationError(f"bad port in gateway URL {url!r}: {err}") from None
        self.url = url
        self.host = parts.hostname
        self.port = port
        self._prefix = parts.path.rstrip("/")
        self.timeout = float(timeout)
        self.context = context if context is not None else tls_context(cert, key, ca)
        self._lock = threading.Lock()
        self._idle: List[_Connection] = []
        self._busy: "set[_Connection]" = set()
        self._closed = False
        #: TCP+TLS connections opened so far (a keep-alive client opens few).
        self.connections_opened = 0
        #: Requests that got an answer (any status).
        self.requests_answered = 0

    # --- the endpoints -------------------------------------------------------------------------

    def register(self, service: str, id: str, address: str, port: int,
                 tags: Optional[Sequence[str]] = None, meta: Optional[Dict[str, str]] = None,
                 ttl_seconds: Optional[int] = None, *,
                 timeout: Optional[float] = None) -> Registration:
        """``PUT /v1/services/{service}/instances/{id}``: an idempotent upsert. Values are sent
        as given; twinreg validates them (a bad one raises :class:`InvalidRequestError` naming
        the ``field``). ``ttl_seconds`` ``None`` leaves twinreg's default (30)."""
        body: Dict[str, Any] = {"address": address, "port": port}
        if tags is not None:
            body["tags"] = list(tags)
        if meta is not None:
            body["meta"] = dict(meta)
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        ans = self._call(f"register {service}/{id}", "PUT", _instance_path(service, id), body,
                         timeout)
        return Registration(
            service=str(ans.get("service", service)), id=str(ans.get("id", id)),
            ttl_seconds=_int(ans.get("ttl_seconds"), ttl_seconds or 30),
            degraded=bool(ans.get("degraded")), registries=_dict(ans.get("registries")))

    def heartbeat(self, service: str, id: str, *, timeout: Optional[float] = None) -> Heartbeat:
        """``PUT …/heartbeat``. Raises :class:`UnknownInstanceError` (404) when no registry
        knows the instance any more: register it again."""
        ans = self._call(f"heartbeat {service}/{id}", "PUT",
                         _instance_path(service, id) + "/heartbeat", None, timeout)
        return Heartbeat(degraded=bool(ans.get("degraded")),
                         registries=_dict(ans.get("registries")))

    def deregister(self, service: str, id: str, *, timeout: Optional[float] = None) -> bool:
        """``DELETE …``: idempotent; returns whether a registry held the instance."""
        ans = self._call(f"deregister {service}/{id}", "DELETE", _instance_path(service, id),
                         None, timeout)
        return bool(ans.get("existed"))

    def drain(self, service: str, id: str, *, timeout: Optional[float] = None) -> Drained:
        """``PUT …/drain``: out of rotation (still registered, listed with ``drained``)."""
        return self._drain("drain", "PUT", service, id, timeout)

    def undrain(self, service: str, id: str, *, timeout: Optional[float] = None) -> Drained:
        """``DELETE …/drain``: back in rotation."""
        return self._drain("undrain", "DELETE", service, id, timeout)

    def instances(self, service: str, *, index: Optional[int] = None,
                  wait: float = LONG_POLL_WAIT, timeout: Optional[float] = None) -> Listing:
        """``GET /v1/services/{service}/instances``. With a non-zero ``index`` this is a long
        poll: the answer comes when the set differs from ``index``, else after ``wait``
        seconds with the same index."""
        path = f"/v1/services/{_seg(service)}/instances"
        if index:
            path += f"?index={int(index)}&wait={_duration(wait)}"
            if timeout is None:
                timeout = float(wait) + self.timeout
        ans = self._call(f"list {service}", "GET", path, None, timeout)
        return Listing.from_json(ans)

    def services(self, *, timeout: Optional[float] = None) -> Dict[str, int]:
        """``GET /v1/services``: each service with a live instance and how many it has."""
        ans = self._call("list services", "GET", "/v1/services", None, timeout)
        out: Dict[str, int] = {}
        for item in ans.get("services") or ():
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                out[item["name"]] = _int(item.get("instances"))
        return out

    def watch(self, service: str, index: int = 0, wait: float = LONG_POLL_WAIT, *,
              stop: Optional[threading.Event] = None, retry: bool = True) -> Iterator[Listing]:
        """Long-polls ``service`` and yields a :class:`Listing` each time its set changes.

        With ``index`` 0 the first listing comes at once; with the index of a listing you hold,
        only changes after it. Indexes are compared for equality only. With ``retry`` (the
        default) failures that may pass — :class:`TransportError`, 429 and 503 (after their
        ``Retry-After``), other 5xx — are retried with backoff and logged on the ``twinreg``
        logger; other errors (403, a bad service name) are raised. An index twinreg refuses
        starts the watch over without yielding an unchanged set again. The iteration ends when
        ``stop`` is set (seen between polls, or at once if :meth:`close` ends the poll)."""
        backoff = Backoff()
        seen = int(index or 0)  # the index of the set the caller holds
        current = seen  # sent with the next poll; 0 asks for an answer at once
        while not _is_set(stop):
            started = time.monotonic()
            try:
                listing = self.instances(service, index=current or None, wait=wait)
            except TwinregError as err:
                if err.status == 400 and err.field == "index":
                    current = 0  # twinreg does not take our index: start over
                elif not (retry and err.retryable):
                    raise
                delay = retry_delay(err, backoff)
                log.warning("watch %s: %s; retrying in %.1fs", service, err, delay)
                _wait(stop, delay)
                continue
            except TransportError as err:
                if _is_set(stop) or self._is_closed():
                    return
                if not retry:
                    raise
                delay = retry_delay(err, backoff)
                log.warning("watch %s: %s; retrying in %.1fs", service, err, delay)
                _wait(stop, delay)
                continue
            backoff.reset()
            if _is_set(stop):
                return
            if listing.index <= 0:
                log.warning("watch %s: an answer without a valid index; starting over", service)
                current = 0
                _wait(stop, random.uniform(1.0, 2.0))
                continue
            if listing.index != seen:
                seen = listing.index
                current = listing.index
                yield listing
                continue
            if current != 0 and time.monotonic() - started < 1.0:
                # Unchanged, yet answered early (a replica shutting down ends its long polls):
                # pause instead of spinning.
                _wait(stop, random.uniform(0.5, 1.5))
            current = listing.index

    def close(self) -> None:
        """Closes every connection, ending requests in flight; later requests raise
        :class:`TransportError`."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for conn in idle:
            conn.close()
        for conn in busy:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _drain(self, what: str, method: str, service: str, id: str,
               timeout: Optional[float]) -> Drained:
        ans = self._call(f"{what} {service}/{id}", method,
                         _instance_path(service, id) + "/drain", None, timeout)
        return Drained(service=str(ans.get("service", service)), id=str(ans.get("id", id)),
                       drained=bool(ans.get("drained")), degraded=bool(ans.get("degraded")),
                       registries=_dict(ans.get("registries")))

    def _call(self, operation: str, method: str, path: str, body: Optional[Dict[str, Any]],
              timeout: Optional[float]) -> Dict[str, Any]:
        """The decoded JSON object of a 2xx answer; raises TwinregError for another status and
        TransportError when there is no usable answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json",
                   "User-Agent": f"twinreg-client-python/{__version__}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        limit = self.timeout if timeout is None else float(timeout)
        for attempt in (1, 2):
            conn, reused = self._acquire(operation, limit)
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as err:
                self._discard(conn)
                if self._is_closed():
                    raise TransportError(operation, err, "the client was closed") from err
                if reused and attempt == 1 and isinstance(err, _STALE):
                    log.debug("%s: kept-alive connection was closed (%s); reconnecting",
                              operation, describe(err))
                    continue
                raise TransportError(operation, err) from err
            self._release(conn, keep=not resp.will_close)
            break
        with self._lock:
            self.requests_answered += 1
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = None
        if 200 <= resp.status < 300:
            if not isinstance(decoded, dict):
                raise TransportError(
                    operation, None, f"HTTP {resp.status} answer whose body is not a JSON object")
            return decoded
        raise TwinregError.from_answer(operation, resp.status, decoded,
                                       resp.getheader("Retry-After"))

    def _acquire(self, operation: str, timeout: float) -> Tuple[_Connection, bool]:
        with self._lock:
            if self._closed:
                raise TransportError(operation, None, "the client is closed")
            conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                conn = _Connection(self, self.host, self.port, context=self.context,
                                   timeout=timeout)
            self._busy.add(conn)
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        else:
            conn.timeout = timeout
        return conn, reused

    def _release(self, conn: _Connection, keep: bool) -> None:
        with self._lock:
            self._busy.discard(conn)
            if keep and not self._closed and conn.sock is not None \
                    and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _discard(self, conn: _Connection) -> None:
        with self._lock:
            self._busy.discard(conn)
        conn.close()  # never reuse a connection in an unknown state

    def _is_closed(self) -> bool:
        with self._lock:
            return self._closed

    def _connected(self) -> None:
        with self._lock:
            self.connections_opened += 1


def tls_context(cert: Optional[str], key: Optional[str], ca: Optional[str]) -> ssl.SSLContext:
    """A context that verifies the gateway (against `ca`, host name included) and presents the
    client certificate. Errors name the files, never their contents."""
    if not cert or not key:
        raise ConfigurationError("a client certificate and key are required (twinreg refuses "
                                 "connections without one): pass cert= and key=, or context=")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as err:
        raise ConfigurationError(f"cannot load CA bundle {ca}: {describe(err)}") from None
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigurationError(
            f"cannot load client certificate {cert} / key {key}: {describe(err)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _seg(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"service and id must be str, got {type(value).__name__}")
    return urllib.parse.quote(value, safe="")


def _instance_path(service: str, id: str) -> str:
    return f"/v1/services/{_seg(service)}/instances/{_seg(id)}"


def _duration(seconds: float) -> str:
    """A long poll's wait as twinreg reads it: ``30s``, or ``1500ms`` for a fraction."""
    seconds = float(seconds)
    if seconds < 0:
        raise ValueError(f"wait must not be negative, got {seconds}")
    if seconds.is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default


def _dict(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_set(stop: Optional[threading.Event]) -> bool:
    return stop is not None and stop.is_set()


def _wait(stop: Optional[threading.Event], seconds: float) -> None:
    if stop is None:
        time.sleep(seconds)
    else:
        stop.wait(seconds)
