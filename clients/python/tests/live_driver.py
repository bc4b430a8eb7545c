"""Drives the installed twinreg client against a live twinreg, for tests/api/client_python.rs.

It reports what the library did as one line per event on stdout (flushed at once); the Rust
test decides whether that is right, so every check there can fail. Diagnostics (the library's
log) go to stderr.

  module <path of the imported twinreg package>
  version <installed distribution version> <twinreg.__version__>
  error <case> type=<class> code=<code> field=<field> status=<status>
        retryable=<bool> permanent=<bool>                        (on one line)
  str <case> <str(error)>
  transport-error type=<class> cause=<class of the cause>
  keepalive requests=<n> connections=<n>
  registered <service>/<id> ttl=<n>s count=<n> degraded=<bool>
  heartbeat <service>/<id> count=<n>
  listed <service>: <id> <host:port> drained=<bool>, ... index=<n>
  services <name>=<count> ...
  drain <service>/<id> drained=<bool> listed_drained=<bool>
  ready
  peer <peer>: <n> instances [<id> <host:port>, ...] index=<n>
  deregistered <service>/<id> existed=<bool>
  closed ok=<bool> registered_count=<n> heartbeats=<n> registered=<bool>

SIGTERM (or SIGINT) closes the keep-alive, which deregisters; the driver then exits 0.
"""

import argparse
import logging
import signal
import socket
import sys
import threading
import time

import twinreg

_print_lock = threading.Lock()


def emit(line):
    with _print_lock:
        print(line, flush=True)


def error_line(case, err):
    emit(f"error {case} type={type(err).__name__} code={err.code} field={err.field} "
         f"status={err.status} retryable={err.retryable} permanent={err.permanent}")
    emit(f"str {case} {err}")


def expect_error(case, fn):
    try:
        fn()
    except twinreg.TwinregError as err:
        error_line(case, err)
    else:
        emit(f"error {case} none")


def closed_port():
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    p = argparse.ArgumentParser()
    for name in ("url", "cert", "key", "ca", "service", "id", "peer", "other"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--ttl", type=int, required=True)
    args = p.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="live_driver %(threadName)s %(levelname)s %(message)s")

    try:
        from importlib.metadata import version
        dist = version("twinreg-client")
    except Exception as err:  # noqa: BLE001 - reported, the test decides
        dist = f"unknown({type(err).__name__})"
    emit(f"module {twinreg.__file__}")
    emit(f"version {dist} {twinreg.__version__}")

    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    client = twinreg.Client(args.url, cert=args.cert, key=args.key, ca=args.ca, timeout=10)
    me = f"{args.service}/{args.id}"

    # Errors: twinreg's code and field, never a bare status.
    probe = twinreg.Client(args.url, cert=args.cert, key=args.key, ca=args.ca, timeout=10)
    expect_error("port", lambda: probe.register(args.service, "probe-1", "127.0.0.1", 0))
    expect_error("service", lambda: probe.register("Not_A_Service", "probe-1", "127.0.0.1", 80))
    expect_error("forbidden", lambda: probe.register(args.other, "probe-1", "127.0.0.1", 80))
    expect_error("unknown", lambda: probe.heartbeat(args.service, "never-registered"))
    probe.close()

    # Keep-alive: requests without a body (twinreg may close a connection after refusing a
    # request whose body it did not read, as it does for a bad path or a 403) share one
    # connection.
    reuse = twinreg.Client(args.url, cert=args.cert, key=args.key, ca=args.ca, timeout=10)
    reuse.services()
    reuse.instances(args.peer)
    expect_error("reuse", lambda: reuse.heartbeat(args.service, "never-registered"))
    reuse.instances(args.service)
    emit(f"keepalive requests={reuse.requests_answered} connections={reuse.connections_opened}")
    reuse.close()

    dead = twinreg.Client(f"https://127.0.0.1:{closed_port()}", cert=args.cert, key=args.key,
                          ca=args.ca, timeout=5)
    try:
        dead.services()
    except twinreg.TransportError as err:
        emit(f"transport-error type={type(err).__name__} cause={type(err.cause).__name__} "
             f"twinreg_error={isinstance(err, twinreg.TwinregError)}")
    except Exception as err:  # noqa: BLE001 - reported, the test decides
        emit(f"transport-error type={type(err).__name__} cause=none twinreg_error="
             f"{isinstance(err, twinreg.TwinregError)}")
    else:
        emit("transport-error none")
    dead.close()

    # The peer's changes, from a long poll on its own connection.
    def watch_peer():
        for listing in client.watch(args.peer, stop=stop):
            listed = ", ".join(f"{i.id} {i.host_port}" for i in listing.instances)
            emit(f"peer {args.peer}: {len(listing.instances)} instances [{listed}] "
                 f"index={listing.index}")

    watcher = threading.Thread(target=watch_peer, name="watch", daemon=True)
    watcher.start()

    def on_register(reg):
        emit(f"registered {reg.service}/{reg.id} ttl={reg.ttl_seconds}s "
             f"count={ka.registered_count} degraded={str(reg.degraded).lower()}")

    def on_heartbeat(_beat):
        emit(f"heartbeat {me} count={ka.heartbeat_count}")

    def on_deregister(existed):
        emit(f"deregistered {me} existed={existed}")

    ka = twinreg.KeepAlive(client, args.service, args.id, "127.0.0.1", 9000,
                           tags=["py"], meta={"lang": "python"}, ttl_seconds=args.ttl,
                           on_register=on_register, on_heartbeat=on_heartbeat,
                           on_deregister=on_deregister)
    with ka:
        if not ka.wait_registered(timeout=30):
            emit(f"not-registered last_error={ka.last_error}")
            return 1

        listing = client.instances(args.service)
        entries = ", ".join(f"{i.id} {i.host_port} drained={i.drained}"
                            for i in listing.instances)
        emit(f"listed {args.service}: {entries} index={listing.index}")
        emit("services " + " ".join(f"{n}={c}" for n, c in sorted(client.services().items())))

        for action in (client.drain, client.undrain):
            d = action(args.service, args.id)
            inst = client.instances(args.service).get(args.id)
            emit(f"{action.__name__} {d.service}/{d.id} drained={d.drained} "
                 f"listed_drained={inst.drained if inst else 'missing'}")

        emit("ready")
        while not stop.wait(0.2):
            pass
        # Leaving the block closes the keep-alive: it stops heartbeating and deregisters.
    emit(f"closed ok={ka.deregistered} registered_count={ka.registered_count} "
         f"heartbeats={ka.heartbeat_count} registered={ka.registered}")

    client.close()  # ends the watch's long poll in flight
    watcher.join(5)
    if watcher.is_alive():
        emit("watch still running after close")
        return 1
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    logging.info("done in %.1fs", time.monotonic() - started)
    sys.exit(code)
