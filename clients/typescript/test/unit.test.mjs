// The runtime's retry logic against a scripted stand-in for the gateway (no network): run with
// `npm test` after `npm run build`. The live behaviour is tests/api/client_typescript.rs's.
import assert from "node:assert/strict";
import test from "node:test";

import {
  Backoff,
  KeepAlive,
  TransportError,
  TwinregError,
  Watch,
  parseRetryAfter,
  parseWait,
} from "../dist/index.js";

const err = (code, status, extra = {}) =>
  new TwinregError({ code, status, detail: `${code} happened`, request: "PUT /x", ...extra });
const refused = () => new TransportError("ECONNREFUSED", "ECONNREFUSED: connect refused", "PUT /x");

/** A client whose answers are scripted per method: each entry is a value, or an Error to throw. */
function scripted(script) {
  const calls = [];
  const next = (op) => async (...args) => {
    calls.push(op);
    const queue = script[op];
    const step = queue.length > 1 ? queue.shift() : queue[0];
    const value = typeof step === "function" ? step(...args) : step;
    if (value instanceof Error) throw value;
    return value;
  };
  return {
    calls,
    timeoutMs: 1000,
    register: next("register"),
    heartbeat: next("heartbeat"),
    deregister: next("deregister"),
    instances: next("instances"),
  };
}

const registered = { registered: true, service: "orders", id: "o-1", ttl_seconds: 0.3, degraded: false, registries: {} };
const beat = { ok: true, degraded: false, registries: {} };
const gone = { deregistered: true, existed: true, degraded: false, registries: {} };

function record(ka) {
  const events = [];
  for (const name of ["state", "registered", "heartbeat", "lost", "retry", "failed", "deregistered", "stopped"]) {
    ka.on(name, (...args) => events.push([name, ...args]));
  }
  return events;
}

const until = async (what, pred, ms = 5000) => {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

test("KeepAlive heartbeats, registers again after unknown_instance, honours Retry-After, backs off, deregisters", async () => {
  const client = scripted({
    register: [registered],
    heartbeat: [beat, err("unknown_instance", 404), beat, err("unavailable", 503, { retryAfter: 0.2 }), refused(), beat],
    deregister: [refused(), gone],
  });
  const ka = new KeepAlive(client, { service: "orders", id: "o-1", address: "10.0.0.1", port: 80, ttlSeconds: 0.3 });
  const events = record(ka);
  assert.equal(ka.state, "idle");
  ka.start();
  const first = await ka.ready();
  assert.equal(first, registered);
  await until("a second registration and beats after it", () => ka.registrations === 2 && client.calls.filter((c) => c === "heartbeat").length >= 6);
  assert.equal(ka.state, "registered");
  const retries = events.filter((e) => e[0] === "retry").map((e) => e[1]);
  assert.equal(retries[0].op, "heartbeat");
  assert.equal(retries[0].delayMs, 200, "Retry-After: 0.2 s");
  assert.ok(retries[1].error instanceof TransportError);
  assert.ok(retries[1].delayMs <= ka.intervalMs, `backoff ${retries[1].delayMs} ms not sooner than the next beat`);
  assert.equal(events.filter((e) => e[0] === "lost").length, 1);
  const result = await ka.stop();
  assert.equal(result.deregistered, gone);
  assert.equal(ka.state, "stopped");
  assert.deepEqual(
    events.filter((e) => e[0] === "state").map((e) => e[1]),
    ["registering", "registered", "registering", "registered", "stopping", "stopped"],
  );
  assert.deepEqual(client.calls.slice(-2), ["deregister", "deregister"]);
  assert.equal(events.at(-1)[0], "stopped");
});

test("KeepAlive stops for good on a refusal and deregisters nothing", async () => {
  const client = scripted({ register: [err("forbidden", 403)], heartbeat: [beat], deregister: [gone] });
  const ka = new KeepAlive(client, { service: "orders", id: "o-1", address: "10.0.0.1", port: 80, ttlSeconds: 5 });
  ka.start();
  await assert.rejects(ka.ready(), (e) => e instanceof TwinregError && e.code === "forbidden");
  assert.equal(ka.state, "failed");
  const result = await ka.stop();
  assert.equal(result.deregistered, undefined);
  assert.ok(!client.calls.includes("deregister"));
});

test("KeepAlive.stop gives up deregistering within its budget", async () => {
  const client = scripted({ register: [registered], heartbeat: [beat], deregister: [refused()] });
  const ka = new KeepAlive(client, {
    service: "orders", id: "o-1", address: "10.0.0.1", port: 80, ttlSeconds: 5, deregisterBudgetMs: 300,
  });
  ka.start();
  await ka.ready();
  const started = Date.now();
  const result = await ka.stop();
  assert.ok(Date.now() - started < 1000, `stop took ${Date.now() - started} ms`);
  assert.ok(result.error instanceof TransportError, String(result.error));
  assert.ok(client.calls.filter((c) => c === "deregister").length >= 1);
});

test("Watch yields each new index once, restarts on a refused index, retries 503, ends on 403", async () => {
  const list = (index, ...ids) => ({ service: "billing", index, instances: ids.map((id) => ({ id })), registries: {} });
  const sent = [];
  const client = scripted({
    instances: [
      list(7, "a"),
      list(7, "a"),
      err("unavailable", 503, { retryAfter: 0 }),
      list(9, "a", "b"),
      err("invalid_request", 400, { field: "index" }),
      list(9, "a", "b"),
      list(11),
      err("forbidden", 403),
    ],
  });
  const inner = client.instances;
  client.instances = (service, options) => {
    sent.push(options.index);
    return inner(service, options);
  };
  const watch = new Watch(client, "billing", { wait: "1s", backoffBaseMs: 1 });
  const seen = [];
  await assert.rejects(
    (async () => {
      for await (const answer of watch) seen.push(answer.index);
    })(),
    (e) => e instanceof TwinregError && e.code === "forbidden",
  );
  assert.deepEqual(seen, [7, 9, 11]);
  assert.deepEqual(sent, [undefined, "7", "7", "7", "9", undefined, "9", "11"]);
  assert.equal(watch.closed, true);
});

test("Watch.close ends a pending next()", async () => {
  const client = scripted({
    instances: [(_s, o) => new Promise((_r, reject) => o.signal.addEventListener("abort", () => reject(new TransportError("aborted", "aborted", "GET")))) ],
  });
  const watch = new Watch(client, "billing");
  const pending = watch.next();
  watch.close();
  assert.deepEqual(await pending, { done: true, value: undefined });
});

test("TwinregError names its code and field, not a bare status", () => {
  const e = err("invalid_request", 400, { field: "port", detail: "port: must be an integer from 1 to 65535" });
  assert.equal(e.message, 'invalid_request (field "port"): port: must be an integer from 1 to 65535 [PUT /x]');
  assert.equal(e.retryable, false);
  assert.equal(err("unavailable", 503).retryable, true);
  assert.equal(err("rate_limited", 429).retryable, true);
});

test("parsers and backoff", () => {
  assert.equal(parseWait("30s"), 30_000);
  assert.equal(parseWait("1m30s"), 90_000);
  assert.equal(parseWait("250ms"), 250);
  assert.equal(parseWait("30"), undefined);
  assert.equal(parseRetryAfter("3"), 3);
  assert.equal(parseRetryAfter(undefined), undefined);
  assert.equal(parseRetryAfter("Thu, 01 Jan 1970 00:00:10 GMT", 0), 10);
  const b = new Backoff(100, 1000, () => 0.999);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next(), b.next(300)], [99, 199, 399, 799, 999, 299]);
  b.reset();
  assert.equal(b.next(), 99);
});
