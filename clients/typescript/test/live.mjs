#!/usr/bin/env node
// Drives the built library (dist/) against a live twinreg; tests/api/client_typescript.rs runs it
// and reads its stdout, one event a line:
//
//   state <state>                                   each KeepAlive state change
//   registered <service>/<id> ttl=<n>s degraded=<b> count=<n>
//   heartbeat <service>/<id> degraded=<b>
//   listed <service>: <id> <address>:<port> drained=<b> sources=<a,b>   (itself, once registered)
//   error <label>: class=<name> code=<code> field=<field> status=<n> retryable=<b> message=<message>
//   drained <service>/<id> drained=<b> listed=<b>  (after drain, then after undrain)
//   services: <name>=<n> ...
//   peer <peer>: <n> instances [<id> <host>:<port>, ...] index=<index>
//   ready
//   deregistered <service>/<id> existed=<b>     (on SIGTERM)
//   stopped deregistered=<b>
//
// Settings from the environment: TWREG_URL, TWREG_CERT, TWREG_KEY, TWREG_CA, TWREG_SERVICE,
// TWREG_ID, TWREG_ADDRESS, TWREG_PORT, TWREG_TTL, TWREG_WATCH (the peer), TWREG_OTHER (a service
// the certificate may not write).
import { Client, KeepAlive, TwinregError } from "../dist/index.js";

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    process.stderr.write(`live: ${name} is not set\n`);
    process.exit(2);
  }
  return v;
};
const out = (line) => process.stdout.write(`${line}\n`);
const log = (line) => process.stderr.write(`live: ${line}\n`);

const service = env("TWREG_SERVICE");
const id = env("TWREG_ID");
const address = env("TWREG_ADDRESS");
const port = Number(env("TWREG_PORT"));
const ttlSeconds = Number(env("TWREG_TTL"));
const peer = env("TWREG_WATCH");
const other = env("TWREG_OTHER");

const client = new Client({
  url: env("TWREG_URL"),
  certFile: env("TWREG_CERT"),
  keyFile: env("TWREG_KEY"),
  caFile: env("TWREG_CA"),
});

const keepAlive = new KeepAlive(client, {
  service,
  id,
  address,
  port,
  ttlSeconds,
  tags: ["typescript"],
  meta: { lang: "typescript" },
  deregisterBudgetMs: 8000,
});
keepAlive.on("state", (state) => out(`state ${state}`));
keepAlive.on("registered", (a, count) =>
  out(`registered ${a.service}/${a.id} ttl=${a.ttl_seconds}s degraded=${a.degraded} count=${count}`),
);
keepAlive.on("heartbeat", (a) => out(`heartbeat ${service}/${id} degraded=${a.degraded}`));
keepAlive.on("lost", (err) => log(`lost: ${err.message}`));
keepAlive.on("retry", (e) => log(`retry ${e.op} in ${e.delayMs} ms: ${e.error.message}`));
keepAlive.on("failed", (err) => log(`failed: ${err.message}`));
keepAlive.on("deregistered", (a) => out(`deregistered ${service}/${id} existed=${a.existed}`));

let stopping = false;
process.on("SIGTERM", () => void shutdown());
process.on("SIGINT", () => void shutdown());

async function shutdown() {
  if (stopping) return;
  stopping = true;
  watch.close();
  const result = await keepAlive.stop();
  out(`stopped deregistered=${result.deregistered !== undefined}`);
  if (result.error) log(`deregistration: ${result.error.message}`);
  await watching;
  client.close();
  process.exit(result.deregistered ? 0 : 1);
}

// The peer's instances, one line per change.
const hostPort = (i) => (i.address.includes(":") ? `[${i.address}]:${i.port}` : `${i.address}:${i.port}`);
const watch = client.watch(peer, {
  wait: "30s",
  onRetry: (err, ms) => log(`watch ${peer}: ${err.message}; retrying in ${ms} ms`),
});
const watching = (async () => {
  try {
    for await (const answer of watch) {
      const items = [...answer.instances].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      out(
        `peer ${peer}: ${items.length} instances [${items.map((i) => `${i.id} ${hostPort(i)}`).join(", ")}] index=${answer.index}`,
      );
    }
  } catch (err) {
    log(`watch ${peer} ended: ${err.message}`);
  }
})();

function describe(label, err) {
  if (!(err instanceof Error)) return `error ${label}: class=none`;
  const e = err instanceof TwinregError ? err : {};
  return (
    `error ${label}: class=${err.name} instanceof=${err instanceof TwinregError} code=${e.code} ` +
    `field=${e.field ?? "-"} status=${e.status} retryable=${e.retryable} message=${err.message}`
  );
}

async function expectError(label, call) {
  try {
    const answer = await call();
    out(`error ${label}: none, answered ${JSON.stringify(answer)}`);
  } catch (err) {
    out(describe(label, err));
  }
}

keepAlive.start();
try {
  await keepAlive.ready();
} catch (err) {
  log(`never registered: ${err.message}`);
  process.exit(1);
}
if (stopping) await new Promise(() => {});

// It lists itself.
const listed = await client.instances(service);
const me = listed.instances.find((i) => i.id === id);
out(
  me
    ? `listed ${service}: ${me.id} ${hostPort(me)} drained=${me.drained} sources=${me.sources.join(",")}`
    : `listed ${service}: ${id} missing from ${JSON.stringify(listed)}`,
);

// Errors: a bad port names its field; another service's instance is forbidden.
await expectError("port-0", () => client.register(service, `${id}-bad`, { address, port: 0 }));
await expectError("other-service", () => client.register(other, id, { address, port }));

// Drain and undrain itself: it stays listed, flagged.
for (const [what, call] of [
  ["drain", () => client.drain(service, id)],
  ["undrain", () => client.undrain(service, id)],
]) {
  try {
    const answer = await call();
    const now = await client.instances(service);
    const flag = now.instances.find((i) => i.id === id)?.drained;
    out(`drained ${service}/${id} drained=${answer.drained} listed=${flag}`);
  } catch (err) {
    out(describe(what, err));
  }
}

const services = await client.services();
out(
  `services: ${[...services.services]
    .sort((a, b) => (a.name < b.name ? -1 : 1))
    .map((s) => `${s.name}=${s.instances}`)
    .join(" ")}`,
);
out("ready");
