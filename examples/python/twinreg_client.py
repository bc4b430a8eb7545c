#!/usr/bin/env python3
"""A twinreg client using only the Python standard library.

It registers one service instance with a twinreg gateway over mutual TLS, heartbeats it every
ttl/3, long-polls the instance list of a peer service, and deregisters on SIGTERM or SIGINT.

Output contract (stable, one event per line, meant to be parsed):

  stdout  registered <service>/<id> ttl=<seconds>s degraded=<true|false>
          peer <peer>: <n> instances [<id> <host>:<port>, ...] index=<index>
          deregistered <service>/<id> existed=<true|false>
  stderr  diagnostics (retries, degraded answers, errors); no secrets, only file paths.

Exit status: 0 after a clean deregistration (or a stop before any registration succeeded), 1
when deregistering a registered instance failed (the registries' TTL then removes it), 2 for a configuration error or a request the gateway refuses for
good (400, 403, 413: a retry cannot fix those).

Every setting is a flag or an environment variable (the flag wins). The variables use the
TWREG_ prefix, not TWINREG_: the gateway reads TWINREG_* as configuration and rejects unknown
keys, so the two must not share a shell's namespace.
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse

LONG_POLL_WAIT = 30  # seconds the gateway may hold a long poll
REQUEST_TIMEOUT = 10  # seconds for register, heartbeat and deregister
DEREGISTER_BUDGET = 10  # seconds spent trying to deregister on shutdown
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0

_print_lock = threading.Lock()


def emit(line):
    """One event line on stdout, flushed at once so a supervisor or a test sees it."""
    with _print_lock:
        print(line, flush=True)


def log(message):
    with _print_lock:
        print(f"twinreg-client: {message}", file=sys.stderr, flush=True)


class Fatal(Exception):
    """A failure retrying cannot fix (bad configuration, a refused request)."""


class BadAnswer(http.client.HTTPException):
    """A 2xx answer whose body is not the JSON object the API promises (retried like a
    connection error: a proxy in the way, a gateway mid-restart)."""


class ApiError(Exception):
    """A non-2xx answer from the gateway, with its error code and Retry-After."""

    def __init__(self, status, body, retry_after):
        self.status = status
        self.code = body.get("error", "") if isinstance(body, dict) else ""
        self.message = body.get("message", "") if isinstance(body, dict) else ""
        self.field = body.get("field") if isinstance(body, dict) else None
        self.retry_after = retry_after
        detail = f"{self.code}: {self.message}" if self.code else "no error body"
        if self.field:
            detail += f" (field {self.field})"
        super().__init__(f"HTTP {status} {detail}")

    @property
    def permanent(self):
        return self.status in (400, 403, 405, 413)


class Backoff:
    """Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2^n))."""

    def __init__(self, base=BACKOFF_BASE, cap=BACKOFF_CAP):
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self):
        delay = random.uniform(0, min(self.cap, self.base * (2 ** self.attempt)))
        self.attempt = min(self.attempt + 1, 16)
        return delay

    def reset(self):
        self.attempt = 0


class Gateway:
    """One keep-alive HTTPS connection to the gateway. Not thread-safe: one per thread."""

    def __init__(self, url, context, timeout):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise Fatal(f"gateway URL must be https://host[:port], got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.prefix = parts.path.rstrip("/")
        self.context = context
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, timeout=None):
        """Returns the decoded JSON body of a 2xx answer; raises ApiError for any other status
        and OSError / http.client.HTTPException when the connection fails."""
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=self.timeout
            )
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            if self.conn.sock is not None:
                self.conn.sock.settimeout(timeout or self.timeout)
            else:
                self.conn.timeout = timeout or self.timeout
            self.conn.request(method, self.prefix + path, body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()  # never reuse a connection in an unknown state
            raise
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = None
        if 200 <= resp.status < 300:
            if not isinstance(decoded, dict):
                raise BadAnswer(f"HTTP {resp.status} with a body that is not a JSON object")
            return decoded
        raise ApiError(resp.status, decoded, retry_after_seconds(resp.getheader("Retry-After")))

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def retry_after_seconds(value):
    try:
        return max(0.0, min(float(value), 300.0))
    except (TypeError, ValueError):
        return None


def describe(err):
    """A short, secret-free description of a failure."""
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err.reason or err}"
    if isinstance(err, socket.timeout):
        return "timed out"
    return str(err) or type(err).__name__


def retry_delay(err, backoff):
    """How long to wait before retrying after `err`: Retry-After on a 503, else backoff."""
    if isinstance(err, ApiError) and err.status == 503 and err.retry_after is not None:
        backoff.next()  # still grow, for the case Retry-After stops coming
        return err.retry_after
    return backoff.next()


class Client:
    def __init__(self, cfg, context, stop):
        self.cfg = cfg
        self.stop = stop
        self.path = "/v1/services/{}/instances/{}".format(
            urllib.parse.quote(cfg.service, safe=""), urllib.parse.quote(cfg.id, safe="")
        )
        self.name = f"{cfg.service}/{cfg.id}"
        self.gw = Gateway(cfg.url, context, REQUEST_TIMEOUT)
        self.registered = False  # the gateway confirmed a registration at least once
        self.body = {
            "address": cfg.address,
            "port": cfg.port,
            "tags": cfg.tags,
            "meta": cfg.meta,
            "ttl_seconds": cfg.ttl,
        }

    def register(self):
        """Registers until it succeeds or `stop` is set. Returns True when registered."""
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                resp = self.gw.request("PUT", self.path, self.body)
            except ApiError as err:
                if err.permanent:
                    raise Fatal(f"register {self.name} refused: {err}")
                delay = retry_delay(err, backoff)
                log(f"register {self.name}: {err}; retrying in {delay:.1f}s")
            except (OSError, http.client.HTTPException) as err:
                delay = retry_delay(err, backoff)
                log(f"register {self.name}: {describe(err)}; retrying in {delay:.1f}s")
            else:
                self.registered = True
                degraded = bool(resp.get("degraded"))
                ttl = resp.get("ttl_seconds", self.cfg.ttl)
                emit(f"registered {self.name} ttl={ttl}s degraded={str(degraded).lower()}")
                if degraded:
                    log(f"register {self.name} degraded: {failed_registries(resp)}")
                return True
            self.stop.wait(delay)
        return False

    def heartbeat_loop(self):
        """Heartbeats every ttl/3 until `stop` is set, re-registering when the gateway has
        forgotten the instance and retrying transient failures sooner than the next beat."""
        interval = self.cfg.ttl / 3.0
        timeout = max(2.0, min(REQUEST_TIMEOUT, interval))  # a slower beat is late anyway
        backoff = Backoff(cap=interval)
        delay = interval
        while not self.stop.wait(delay):
            try:
                resp = self.gw.request("PUT", self.path + "/heartbeat", timeout=timeout)
            except ApiError as err:
                if err.status == 404 and err.code == "unknown_instance":
                    log(f"heartbeat {self.name}: the gateway no longer knows it; registering again")
                    if not self.register():
                        return
                    backoff.reset()
                    delay = interval
                    continue
                delay = retry_delay(err, backoff)
                log(f"heartbeat {self.name}: {err}; retrying in {delay:.1f}s")
                continue
            except (OSError, http.client.HTTPException) as err:
                delay = retry_delay(err, backoff)
                log(f"heartbeat {self.name}: {describe(err)}; retrying in {delay:.1f}s")
                continue
            if resp.get("degraded"):
                log(f"heartbeat {self.name} degraded: {failed_registries(resp)}")
            backoff.reset()
            # A little jitter so a fleet started together does not beat in lockstep.
            delay = interval * random.uniform(0.9, 1.0)

    def deregister(self):
        """Deregisters; returns False when the gateway could not confirm it.

        Once registered, transient failures are retried for DEREGISTER_BUDGET seconds. Never
        registered (stopped while still trying), it makes a single attempt: a request the
        gateway received may have landed, but nothing is known to need cleaning up."""
        deadline = time.monotonic() + (DEREGISTER_BUDGET if self.registered else 0)
        backoff = Backoff(cap=2.0)
        while True:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                resp = self.gw.request(
                    "DELETE", self.path, timeout=min(REQUEST_TIMEOUT, remaining)
                )
            except ApiError as err:
                if err.permanent:
                    log(f"deregister {self.name}: {err}")
                    return False
                failure, delay = str(err), retry_delay(err, backoff)
            except (OSError, http.client.HTTPException) as err:
                failure, delay = describe(err), retry_delay(err, backoff)
            else:
                existed = str(bool(resp.get("existed"))).lower()
                emit(f"deregistered {self.name} existed={existed}")
                return True
            if time.monotonic() + delay > deadline:
                log(f"deregister {self.name} failed: {failure}; the registries' TTL will "
                    "expire it")
                return False
            log(f"deregister {self.name}: {failure}; retrying in {delay:.1f}s")
            time.sleep(delay)


def failed_registries(resp):
    regs = resp.get("registries") or {}
    bad = [f"{name}: {r.get('error', 'failed')}" for name, r in sorted(regs.items())
           if isinstance(r, dict) and not r.get("ok")]
    return ", ".join(bad) or "no detail"


def host_port(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def peer_line(peer, body):
    instances = sorted(body.get("instances") or [], key=lambda i: str(i.get("id", "")))
    listed = ", ".join(
        f"{i.get('id')} {host_port(str(i.get('address')), i.get('port'))}" for i in instances
    )
    return f"peer {peer}: {len(instances)} instances [{listed}] index={body.get('index')}"


def watch_loop(cfg, context, stop):
    """Long-polls the peer's instance list and prints one line per change.

    The index is an opaque content hash of the instance set, not a counter: it is only ever
    compared for equality and sent back. Anything that is not a positive integer resets it to 0,
    which makes the next request answer at once with the current index.
    """
    gw = Gateway(cfg.url, context, REQUEST_TIMEOUT)
    base = "/v1/services/{}/instances".format(urllib.parse.quote(cfg.watch, safe=""))
    backoff = Backoff()
    index = 0  # sent with the next request; 0 asks for an immediate answer
    printed = 0  # index of the last line printed, so a reset does not repeat an unchanged set
    while not stop.is_set():
        path = base if index == 0 else f"{base}?index={index}&wait={LONG_POLL_WAIT}s"
        started = time.monotonic()
        try:
            body = gw.request("GET", path, timeout=LONG_POLL_WAIT + REQUEST_TIMEOUT)
        except ApiError as err:
            if err.status == 400 and err.field == "index":
                index = 0  # the gateway does not accept our index: start over
            # 403 or 404 will not heal by itself, but the watch is secondary to staying
            # registered: keep trying (the backoff soon reaches its 30 s cap) and say why.
            delay = retry_delay(err, backoff)
            log(f"watch {cfg.watch}: {err}; retrying in {delay:.1f}s")
            stop.wait(delay)
            continue
        except (OSError, http.client.HTTPException) as err:
            delay = retry_delay(err, backoff)
            log(f"watch {cfg.watch}: {describe(err)}; retrying in {delay:.1f}s")
            stop.wait(delay)
            continue
        backoff.reset()
        new_index = body.get("index")
        if not isinstance(new_index, int) or isinstance(new_index, bool) or new_index <= 0:
            log(f"watch {cfg.watch}: answer without a valid index; starting over")
            index = 0
            stop.wait(random.uniform(1.0, 2.0))
            continue
        if stop.is_set():
            return
        if new_index != printed:
            emit(peer_line(cfg.watch, body))
            printed = new_index
        elif index != 0 and time.monotonic() - started < 1.0:
            # Unchanged yet answered early (e.g. a replica shutting down ends its long polls):
            # pause briefly instead of spinning.
            stop.wait(random.uniform(0.5, 1.5))
        index = new_index


def parse_pairs(items, what):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Fatal(f"{what} must be KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def split_list(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def parse_config(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(
        description="Register with twinreg, heartbeat, watch a peer service, deregister on "
        "SIGTERM. Every flag has a TWREG_* environment variable; the flag wins."
    )
    p.add_argument("--url", default=env("TWREG_URL"),
                   help="gateway URL, https://host:port (TWREG_URL)")
    p.add_argument("--cert", default=env("TWREG_CERT"),
                   help="client certificate PEM (TWREG_CERT)")
    p.add_argument("--key", default=env("TWREG_KEY"),
                   help="client private key PEM (TWREG_KEY)")
    p.add_argument("--ca", default=env("TWREG_CA"),
                   help="CA bundle that signed the gateway's certificate (TWREG_CA)")
    p.add_argument("--service", default=env("TWREG_SERVICE"),
                   help="service to register; the certificate must allow it (TWREG_SERVICE)")
    p.add_argument("--id", default=env("TWREG_ID") or default_id(),
                   help="instance id (TWREG_ID; default: the host name)")
    p.add_argument("--address", default=env("TWREG_ADDRESS"),
                   help="address peers dial, IP or host name (TWREG_ADDRESS)")
    p.add_argument("--port", type=int, default=env("TWREG_PORT"),
                   help="port peers dial (TWREG_PORT)")
    p.add_argument("--ttl", type=int, default=env("TWREG_TTL", "30"),
                   help="seconds without a heartbeat before the registries drop the instance, "
                   "5-3600 (TWREG_TTL; default 30)")
    p.add_argument("--tag", action="append", default=None,
                   help="a tag, repeatable (TWREG_TAGS, comma-separated)")
    p.add_argument("--meta", action="append", default=None,
                   help="KEY=VALUE metadata, repeatable (TWREG_META, comma-separated)")
    p.add_argument("--watch", default=env("TWREG_WATCH"),
                   help="peer service whose instances to watch (TWREG_WATCH; optional)")
    cfg = p.parse_args(argv)
    missing = [f"--{n}" for n in ("url", "cert", "key", "ca", "service", "id", "address", "port")
               if getattr(cfg, n) in (None, "")]
    if missing:
        p.error("missing " + ", ".join(missing) + " (or their TWREG_* variables)")
    if not 1 <= cfg.port <= 65535:
        p.error("--port must be 1-65535")
    if not 5 <= cfg.ttl <= 3600:
        p.error("--ttl must be 5-3600 seconds")
    cfg.tags = cfg.tag if cfg.tag is not None else split_list(env("TWREG_TAGS"))
    try:
        cfg.meta = parse_pairs(
            cfg.meta if cfg.meta is not None else split_list(env("TWREG_META")), "--meta"
        )
    except Fatal as err:
        p.error(str(err))
    return cfg


def default_id():
    host = socket.gethostname()
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in host)[:128] or None


def tls_context(cfg):
    """Verifies the gateway against the CA bundle (host name included) and presents the client
    certificate. Errors name the files, never their contents."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca)
    except (OSError, ssl.SSLError) as err:
        raise Fatal(f"cannot load CA bundle {cfg.ca}: {describe(err)}")
    try:
        ctx.load_cert_chain(cfg.cert, cfg.key)
    except (OSError, ssl.SSLError) as err:
        raise Fatal(f"cannot load client certificate {cfg.cert} / key {cfg.key}: {describe(err)}")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def main(argv=None):
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            log("second signal: exiting without waiting for deregistration")
            os._exit(1)
        log(f"{signal.Signals(signum).name}: stopping")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        context = tls_context(cfg)
        client = Client(cfg, context, stop)
        if cfg.watch:
            threading.Thread(
                target=watch_loop, args=(cfg, context, stop), name="watch", daemon=True
            ).start()
        if client.register():
            client.heartbeat_loop()
    except Fatal as err:
        log(str(err))
        return 2
    # Stopping: heartbeats have ended. Deregister even if registration never answered, since a
    # request the gateway received may have landed; deregistering is idempotent.
    if client.deregister() or not client.registered:
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
