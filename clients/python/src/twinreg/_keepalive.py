"""KeepAlive: keeps one instance registered from a background thread, and deregisters it."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence

from ._backoff import Backoff, retry_delay
from ._client import Client, Heartbeat, Registration
from ._errors import Error, TransportError, TwinregError

__all__ = ["KeepAlive", "DEREGISTER_BUDGET"]

DEREGISTER_BUDGET = 10.0  # seconds spent trying to deregister on close
DEFAULT_TTL = 30  # twinreg's default ttl_seconds

log = logging.getLogger("twinreg")


class KeepAlive:
    """Registers an instance and keeps it registered from a background thread until closed.

    * **Register**, retrying until twinreg accepts (backoff with full jitter; the
      ``Retry-After`` of a 429 or 503). A refusal retrying cannot fix (400, 403, 413) stops the
      thread: it is kept in :attr:`fatal_error` and raised by :meth:`wait_registered`.
    * **Heartbeat** every ttl/3 with a little jitter. On 404 ``unknown_instance`` (twinreg
      forgot the instance: both registries dropped it, or someone deregistered it) register
      again. On 429/503 wait ``Retry-After``; on a transport error back off, sooner than the
      next beat. Transient failures never stop it.
    * **Close** (:meth:`close`, or leaving the ``with`` block): stop heartbeating and
      deregister, retrying transient failures for ``deregister_budget`` seconds.

    ::

        with twinreg.KeepAlive(client, "orders", "ord-1", "10.0.0.7", 8080, ttl_seconds=15) as ka:
            ka.wait_registered(timeout=30)
            serve()

    The state is readable at any time — :attr:`registered`, :attr:`registered_count`,
    :attr:`heartbeat_count`, :attr:`last_error`, :attr:`last_registration` — and callbacks, run
    on the keep-alive thread (an exception in one is logged, never fatal), say when it changes:
    ``on_register(Registration)``, ``on_heartbeat(Heartbeat)``,
    ``on_error(operation, error, retry_in_seconds)`` and ``on_deregister(existed)``.
    """

    def __init__(self, client: Client, service: str, id: str, address: str, port: int,
                 tags: Optional[Sequence[str]] = None, meta: Optional[Dict[str, str]] = None,
                 ttl_seconds: Optional[int] = None, *,
                 on_register: Optional[Callable[[Registration], Any]] = None,
                 on_heartbeat: Optional[Callable[[Heartbeat], Any]] = None,
                 on_error: Optional[Callable[[str, Exception, Optional[float]], Any]] = None,
                 on_deregister: Optional[Callable[[bool], Any]] = None,
                 deregister_budget: float = DEREGISTER_BUDGET):
        self.client = client
        self.service = service
        self.id = id
        self.address = address
        self.port = port
        self.tags = list(tags) if tags is not None else None
        self.meta = dict(meta) if meta is not None else None
        self.ttl_seconds = ttl_seconds
        self.deregister_budget = deregister_budget
        self.on_register = on_register
        self.on_heartbeat = on_heartbeat
        self.on_error = on_error
        self.on_deregister = on_deregister

        #: True while twinreg is believed to hold the instance (set by a registration, cleared
        #: by a 404 ``unknown_instance`` and by the deregistration).
        self.registered = False
        #: Successful registrations so far (the first, and one per re-registration after a 404).
        self.registered_count = 0
        #: Successful heartbeats so far.
        self.heartbeat_count = 0
        #: The last failure (retried or not), ``None`` until one happens.
        self.last_error: Optional[Exception] = None
        #: The refusal that stopped the thread (400, 403, 413), else ``None``.
        self.fatal_error: Optional[TwinregError] = None
        #: The answer of the last successful registration.
        self.last_registration: Optional[Registration] = None
        #: After :meth:`close`: True when twinreg confirmed the deregistration, False when it
        #: could not (the registries' TTL then removes the instance), None before or when
        #: nothing needed deregistering.
        self.deregistered: Optional[bool] = None
        #: After a confirmed deregistration: whether a registry still held the instance.
        self.existed: Optional[bool] = None

        self._stop = threading.Event()
        self._first = threading.Event()  # set by the first registration or the thread's end
        self._thread: Optional[threading.Thread] = None
        self._close_lock = threading.Lock()
        self._closed = False
        self._ever_registered = False

    @property
    def name(self) -> str:
        return f"{self.service}/{self.id}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> "KeepAlive":
        """Starts the background thread (at most once) and returns at once."""
        if self._thread is not None:
            raise RuntimeError(f"KeepAlive {self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=f"twinreg-keepalive-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "KeepAlive":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_registered(self, timeout: Optional[float] = None) -> bool:
        """Waits for the first registration: True once registered, False when `timeout` passed
        first (or the keep-alive was closed first). Raises the refusal that stopped it
        (:attr:`fatal_error`)."""
        self._first.wait(timeout)
        if self.fatal_error is not None:
            raise self.fatal_error
        return self._ever_registered

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stops heartbeating and deregisters. Idempotent.

        Returns True when the instance is gone (deregistration confirmed, or it was never
        registered) and False when a registered instance could not be deregistered within the
        budget (``timeout``, default ``deregister_budget``); the registries' TTL then removes
        it. Never registered (closed while still trying), it makes one attempt, since a request
        twinreg received may have landed."""
        with self._close_lock:
            if self._closed:
                return self.deregistered is not False
            self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # A request in flight ends within the client's timeout; wait for it so that a
            # registration cannot land after the deregistration.
            thread.join(self.client.timeout + 2.0)
        self._first.set()
        if thread is None or (self.fatal_error is not None and not self._ever_registered):
            return True  # never started, or refused before anything was written
        budget = self.deregister_budget if timeout is None else timeout
        ok = self._deregister(budget if self._ever_registered else 0.0)
        return ok or not self._ever_registered

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._register_until_done():
                self._heartbeat_loop()
        except TwinregError as err:  # a refusal retrying cannot fix
            self.fatal_error = err
            self.last_error = err
            log.error("keep-alive %s stopped: %s", self.name, err)
            self._callback(self.on_error, "register", err, None)
        except Exception as err:  # noqa: BLE001 - a bug must not die silently on a thread
            self.last_error = err
            log.exception("keep-alive %s stopped", self.name)
        finally:
            self._first.set()

    def _register_until_done(self) -> bool:
        """Registers until twinreg accepts (True) or the keep-alive is closed (False)."""
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                reg = self.client.register(self.service, self.id, self.address, self.port,
                                           self.tags, self.meta, self.ttl_seconds)
            except TwinregError as err:
                if err.permanent:
                    raise
                delay = self._failed("register", err, backoff)
            except TransportError as err:
                delay = self._failed("register", err, backoff)
            else:
                self.last_registration = reg
                self.registered = True
                self._ever_registered = True
                self.registered_count += 1
                if reg.degraded:
                    log.warning("register %s degraded: %s", self.name,
                                failed_registries(reg.registries))
                self._callback(self.on_register, reg)
                self._first.set()
                return True
            self._stop.wait(delay)
        return False

    def _heartbeat_loop(self) -> None:
        ttl = self._ttl()
        interval = ttl / 3.0
        timeout = max(2.0, min(self.client.timeout, interval))  # a slower beat is late anyway
        backoff = Backoff(cap=interval)
        delay = interval * random.uniform(0.9, 1.0)
        while not self._stop.wait(delay):
            try:
                beat = self.client.heartbeat(self.service, self.id, timeout=timeout)
            except TwinregError as err:
                if err.status == 404 and err.code == "unknown_instance":
                    self.registered = False
                    self.last_error = err
                    log.warning("heartbeat %s: twinreg no longer knows it; registering again",
                                self.name)
                    self._callback(self.on_error, "heartbeat", err, 0.0)
                    if not self._register_until_done():
                        return
                    if self._ttl() != ttl:
                        ttl = self._ttl()
                        interval = ttl / 3.0
                        timeout = max(2.0, min(self.client.timeout, interval))
                        backoff = Backoff(cap=interval)
                    backoff.reset()
                    delay = interval * random.uniform(0.9, 1.0)
                    continue
                delay = self._failed("heartbeat", err, backoff)
                continue
            except TransportError as err:
                delay = self._failed("heartbeat", err, backoff)
                continue
            self.heartbeat_count += 1
            if beat.degraded:
                log.warning("heartbeat %s degraded: %s", self.name,
                            failed_registries(beat.registries))
            self._callback(self.on_heartbeat, beat)
            backoff.reset()
            # A little jitter so a fleet started together does not beat in lockstep.
            delay = interval * random.uniform(0.9, 1.0)

    def _deregister(self, budget: float) -> bool:
        deadline = time.monotonic() + budget
        backoff = Backoff(cap=2.0)
        while True:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                existed = self.client.deregister(self.service, self.id,
                                                 timeout=min(self.client.timeout, remaining))
            except TwinregError as err:
                self.last_error = err
                if err.permanent:
                    log.error("deregister %s: %s", self.name, err)
                    self._callback(self.on_error, "deregister", err, None)
                    self.deregistered = False
                    return False
                delay = retry_delay(err, backoff)
            except TransportError as err:
                self.last_error = err
                delay = retry_delay(err, backoff)
            else:
                self.registered = False
                self.deregistered = True
                self.existed = existed
                self._callback(self.on_deregister, existed)
                return True
            if time.monotonic() + delay > deadline:
                log.error("deregister %s failed: %s; the registries' TTL will expire it",
                          self.name, self.last_error)
                self._callback(self.on_error, "deregister", self.last_error, None)
                self.deregistered = False
                return False
            log.warning("deregister %s: %s; retrying in %.1fs", self.name, self.last_error,
                        delay)
            self._callback(self.on_error, "deregister", self.last_error, delay)
            time.sleep(delay)

    # --- helpers -------------------------------------------------------------------------------

    def _ttl(self) -> float:
        reg = self.last_registration
        if reg is not None and reg.ttl_seconds > 0:
            return float(reg.ttl_seconds)
        return float(self.ttl_seconds or DEFAULT_TTL)

    def _failed(self, operation: str, err: Error, backoff: Backoff) -> float:
        delay = retry_delay(err, backoff)
        self.last_error = err
        log.warning("%s %s: %s; retrying in %.1fs", operation, self.name, err, delay)
        self._callback(self.on_error, operation, err, delay)
        return delay

    def _callback(self, fn: Optional[Callable[..., Any]], *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a callback must not stop the keep-alive
            log.exception("keep-alive %s: callback %r failed", self.name, fn)


def failed_registries(registries: Dict[str, Any]) -> str:
    """``"consul: timed out"`` for the registries that did not accept, for a log line."""
    bad = [f"{name}: {r.get('error', 'failed')}" for name, r in sorted(registries.items())
           if isinstance(r, dict) and not r.get("ok")]
    return ", ".join(bad) or "no detail"
