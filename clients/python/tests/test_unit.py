"""Unit tests of the twinreg client, no gateway needed:

    python3 -m unittest discover clients/python/tests

They test the installed package when there is one, else the source tree next to them.
tests/api/client_python.rs runs them against the installed package, then the live scenario.
"""

import os
import sys
import threading
import time
import unittest

try:
    import twinreg
except ImportError:  # not installed: the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import twinreg

from twinreg._client import _duration, _instance_path


class ErrorTests(unittest.TestCase):
    def test_invalid_request_carries_code_and_field(self):
        err = twinreg.TwinregError.from_answer(
            "register orders/ord-1", 400,
            {"error": "invalid_request", "message": "port: must be an integer from 1 to 65535",
             "field": "port"})
        self.assertIsInstance(err, twinreg.InvalidRequestError)
        self.assertEqual((err.status, err.code, err.field), (400, "invalid_request", "port"))
        self.assertTrue(err.permanent)
        self.assertFalse(err.retryable)
        text = str(err)
        self.assertIn("invalid_request", text)
        self.assertIn("field port", text)
        self.assertIn("register orders/ord-1", text)
        self.assertNotEqual(text.strip(), "400")

    def test_each_code_has_its_class(self):
        cases = {
            "forbidden": (403, twinreg.ForbiddenError),
            "unknown_instance": (404, twinreg.UnknownInstanceError),
            "not_found": (404, twinreg.NotFoundError),
            "payload_too_large": (413, twinreg.PayloadTooLargeError),
            "unavailable": (503, twinreg.UnavailableError),
            "rate_limited": (429, twinreg.RateLimitedError),
            "request_timeout": (408, twinreg.RequestTimeoutError),
        }
        for code, (status, klass) in cases.items():
            err = twinreg.TwinregError.from_answer("op", status, {"error": code, "message": "m"})
            self.assertIs(type(err), klass, code)
            self.assertEqual(err.code, code)
            self.assertIsInstance(err, twinreg.Error)

    def test_unavailable_has_retry_after_and_registries(self):
        regs = {"etcd": {"ok": False, "error": "timed out"}, "consul": {"ok": False}}
        err = twinreg.TwinregError.from_answer(
            "heartbeat a/b", 503, {"error": "unavailable", "message": "no registry",
                                   "registries": regs}, "3")
        self.assertEqual(err.retry_after, 3.0)
        self.assertEqual(err.registries, regs)
        self.assertTrue(err.retryable)
        self.assertIn("retry after 3s", str(err))

    def test_an_answer_without_a_twinreg_body(self):
        err = twinreg.TwinregError.from_answer("list a", 502, None)
        self.assertIs(type(err), twinreg.TwinregError)
        self.assertIsNone(err.code)
        self.assertIsNone(err.field)
        self.assertIn("no twinreg error code", str(err))
        self.assertIn("HTTP 502", str(err))
        self.assertTrue(err.retryable)

    def test_transport_error_is_not_a_twinreg_error(self):
        err = twinreg.TransportError("heartbeat a/b", ConnectionRefusedError(111, "refused"))
        self.assertNotIsInstance(err, twinreg.TwinregError)
        self.assertIsInstance(err, twinreg.Error)
        self.assertIn("ConnectionRefusedError", str(err))

    def test_retry_after(self):
        self.assertEqual(twinreg.parse_retry_after("2"), 2.0)
        self.assertEqual(twinreg.parse_retry_after(" 4 "), 4.0)
        self.assertEqual(twinreg.parse_retry_after("100000"), 300.0)
        self.assertEqual(twinreg.parse_retry_after("-5"), 0.0)
        self.assertIsNone(twinreg.parse_retry_after(None))
        self.assertIsNone(twinreg.parse_retry_after("soon"))
        self.assertIsNone(twinreg.parse_retry_after("nan"))
        date = "Wed, 21 Oct 2015 07:28:10 GMT"
        self.assertEqual(twinreg.parse_retry_after(date, now=1445412480.0), 10.0)


class BackoffTests(unittest.TestCase):
    def test_grows_to_its_cap_and_resets(self):
        b = twinreg.Backoff(base=0.5, cap=4.0, rng=lambda lo, hi: hi)
        self.assertEqual([b.next() for _ in range(6)], [0.5, 1.0, 2.0, 4.0, 4.0, 4.0])
        b.reset()
        self.assertEqual(b.next(), 0.5)

    def test_full_jitter_stays_in_range(self):
        b = twinreg.Backoff(base=1.0, cap=8.0)
        for _ in range(200):
            ceiling = b.ceiling()
            d = b.next()
            self.assertGreaterEqual(d, 0.0)
            self.assertLessEqual(d, ceiling)

    def test_retry_after_wins_on_429_and_503_only(self):
        b = twinreg.Backoff(base=0.5, cap=30.0, rng=lambda lo, hi: hi)
        for status, code in ((503, "unavailable"), (429, "rate_limited")):
            err = twinreg.TwinregError.from_answer("op", status, {"error": code}, "3")
            self.assertEqual(twinreg.retry_delay(err, b), 3.0)
        self.assertEqual(b.attempt, 2, "the backoff still grows")
        err = twinreg.TwinregError.from_answer("op", 500, {"error": "x"}, "3")
        self.assertEqual(twinreg.retry_delay(err, b), 2.0)
        self.assertEqual(twinreg.retry_delay(twinreg.TransportError("op"), b), 4.0)


class ModelTests(unittest.TestCase):
    def test_listing(self):
        listing = twinreg.Listing.from_json({
            "service": "billing", "index": 42, "registries": {"etcd": {"ok": True}},
            "instances": [
                {"id": "b", "address": "fd00::1", "port": 81, "tags": ["x"], "meta": {"k": "v"},
                 "ttl_seconds": 30, "drained": True, "sources": ["etcd"]},
                {"id": "a", "address": "10.0.0.5", "port": 80, "tags": [], "meta": {},
                 "ttl_seconds": 30, "drained": False, "sources": ["etcd", "consul"]},
            ]})
        self.assertEqual(listing.index, 42)
        self.assertEqual(listing.ids(), ["a", "b"])
        self.assertEqual([i.host_port for i in listing.instances], ["10.0.0.5:80", "[fd00::1]:81"])
        self.assertTrue(listing.get("b").drained)
        self.assertEqual(listing.get("b").meta, {"k": "v"})
        self.assertIsNone(listing.get("c"))

    def test_an_invalid_index_is_zero(self):
        for bad in (None, "12", True, -1, 1.5):
            self.assertEqual(twinreg.Listing.from_json({"index": bad, "instances": []}).index, 0)

    def test_paths_and_durations(self):
        self.assertEqual(_instance_path("orders", "ord-1"), "/v1/services/orders/instances/ord-1")
        self.assertEqual(_instance_path("a b", "x/y"), "/v1/services/a%20b/instances/x%2Fy")
        self.assertEqual(_duration(30), "30s")
        self.assertEqual(_duration(1.5), "1500ms")

    def test_configuration_errors_name_files(self):
        with self.assertRaises(twinreg.ConfigurationError):
            twinreg.Client("http://127.0.0.1:8443", cert="c.pem", key="k.pem")
        with self.assertRaises(twinreg.ConfigurationError):
            twinreg.Client("https://127.0.0.1:8443")
        with self.assertRaises(twinreg.ConfigurationError) as cm:
            twinreg.Client("https://127.0.0.1:8443", cert="/nonexistent/c.pem",
                           key="/nonexistent/k.pem")
        self.assertIn("/nonexistent/c.pem", str(cm.exception))


class FakeClient:
    """Stands in for twinreg.Client: answers from a script, records the calls."""

    timeout = 1.0

    def __init__(self, heartbeats=(), registers=(), deregisters=()):
        self.heartbeats = list(heartbeats)
        self.registers = list(registers)
        self.deregisters = list(deregisters)
        self.calls = []
        self.lock = threading.Lock()

    def _next(self, script, default):
        item = script.pop(0) if script else default
        if isinstance(item, Exception):
            raise item
        return item

    def register(self, service, id, address, port, tags=None, meta=None, ttl_seconds=None):
        with self.lock:
            self.calls.append("register")
        return self._next(self.registers, twinreg.Registration(service, id, 0.3, False, {}))

    def heartbeat(self, service, id, timeout=None):
        with self.lock:
            self.calls.append("heartbeat")
        return self._next(self.heartbeats, twinreg.Heartbeat(False, {}))

    def deregister(self, service, id, timeout=None):
        with self.lock:
            self.calls.append("deregister")
        return self._next(self.deregisters, True)


def answer(status, code, retry_after=None):
    return twinreg.TwinregError.from_answer("op", status, {"error": code, "message": "m"},
                                            retry_after)


def wait_for(pred, limit=5.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


class KeepAliveTests(unittest.TestCase):
    def test_registers_heartbeats_and_deregisters(self):
        fake = FakeClient()
        beats = []
        with twinreg.KeepAlive(fake, "orders", "ord-1", "127.0.0.1", 80, ttl_seconds=5,
                               on_heartbeat=beats.append) as ka:
            self.assertTrue(ka.wait_registered(2))
            self.assertTrue(wait_for(lambda: len(beats) >= 3))
        self.assertTrue(ka.deregistered)
        self.assertTrue(ka.existed)
        self.assertFalse(ka.registered)
        self.assertEqual(fake.calls[0], "register")
        self.assertEqual(fake.calls[-1], "deregister")
        self.assertEqual(ka.registered_count, 1)

    def test_registers_again_after_unknown_instance(self):
        fake = FakeClient(heartbeats=[twinreg.Heartbeat(False, {}),
                                      answer(404, "unknown_instance")])
        regs = []
        with twinreg.KeepAlive(fake, "orders", "ord-1", "127.0.0.1", 80,
                               on_register=regs.append) as ka:
            self.assertTrue(wait_for(lambda: len(regs) >= 2))
            self.assertEqual(ka.registered_count, 2)
            self.assertIsInstance(ka.last_error, twinreg.UnknownInstanceError)
        self.assertEqual(fake.calls[:4], ["register", "heartbeat", "heartbeat", "register"])

    def test_waits_retry_after_on_503_and_429(self):
        fake = FakeClient(registers=[answer(503, "unavailable", "0.2")],
                          heartbeats=[answer(429, "rate_limited", "0.3")])
        errors = []
        with twinreg.KeepAlive(fake, "orders", "ord-1", "127.0.0.1", 80,
                               on_error=lambda op, err, delay: errors.append((op, err.code, delay))
                               ) as ka:
            self.assertTrue(ka.wait_registered(2))
            self.assertTrue(wait_for(lambda: len(errors) >= 2))
        self.assertEqual(errors[:2], [("register", "unavailable", 0.2),
                                      ("heartbeat", "rate_limited", 0.3)])

    def test_backs_off_on_transport_errors(self):
        fake = FakeClient(registers=[twinreg.TransportError("op", ConnectionRefusedError())] * 2)
        delays = []
        with twinreg.KeepAlive(fake, "orders", "ord-1", "127.0.0.1", 80,
                               on_error=lambda op, err, delay: delays.append(delay)) as ka:
            self.assertTrue(ka.wait_registered(5))
        self.assertEqual(len(delays), 2)
        self.assertLessEqual(delays[0], 0.5)
        self.assertLessEqual(delays[1], 1.0)

    def test_a_refusal_stops_it(self):
        fake = FakeClient(registers=[answer(403, "forbidden")])
        ka = twinreg.KeepAlive(fake, "orders", "ord-1", "127.0.0.1", 80).start()
        with self.assertRaises(twinreg.ForbiddenError):
            ka.wait_registered(2)
        self.assertTrue(ka.close())
        self.assertEqual(fake.calls, ["register"], "nothing to deregister")

    def test_deregistration_retries_within_its_budget(self):
        fake = FakeClient(deregisters=[answer(503, "unavailable", "0.1"), False])
        with twinreg.KeepAlive(fake, "orders", "ord-1", "127.0.0.1", 80) as ka:
            self.assertTrue(ka.wait_registered(2))
        self.assertTrue(ka.deregistered)
        self.assertFalse(ka.existed)
        self.assertEqual(fake.calls.count("deregister"), 2)

    def test_deregistration_gives_up_after_its_budget(self):
        fake = FakeClient(deregisters=[twinreg.TransportError("op")] * 100)
        ka = twinreg.KeepAlive(fake, "orders", "ord-1", "127.0.0.1", 80, deregister_budget=0.5)
        ka.start()
        self.assertTrue(ka.wait_registered(2))
        started = time.monotonic()
        self.assertFalse(ka.close())
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertFalse(ka.deregistered)
        self.assertTrue(ka.close() is False, "close is idempotent")


if __name__ == "__main__":
    unittest.main()
