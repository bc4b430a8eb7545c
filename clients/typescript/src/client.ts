import { readFileSync } from "node:fs";
import https from "node:https";
import type { IncomingHttpHeaders } from "node:http";

import { TransportError, TwinregError, parseRetryAfter } from "./errors.js";
import type { ErrorCode, Ok, RegisterBody, RegistryOutcome } from "./types.js";
import { Watch, type WatchOptions } from "./watch.js";

/** PEM text, as a string or a buffer. */
export type Pem = string | Buffer;

export interface ClientOptions {
  /** The gateway: `https://host:port` (a path prefix is kept, e.g. behind a proxy). */
  url: string;
  /** The client certificate (PEM), or `certFile`. */
  cert?: Pem;
  /** Its private key (PEM), or `keyFile`. */
  key?: Pem;
  /** The CA bundle that signed the gateway's certificate (PEM), or `caFile`. */
  ca?: Pem | Pem[];
  certFile?: string;
  keyFile?: string;
  caFile?: string;
  /** The TLS server name, when it differs from the URL's host. */
  servername?: string;
  /** A request's time limit in ms, from sending to the whole answer (default 10 s). A long poll
   * gets its `wait` on top. */
  timeoutMs?: number;
  /** Connections kept open per host (default 8). */
  maxSockets?: number;
  /** An agent of your own instead of the client's keep-alive agent (it must carry the TLS
   * material; `cert`, `key`, `ca` are then ignored). */
  agent?: https.Agent;
}

/** What every call takes. */
export interface CallOptions {
  /** Aborts the request: it fails with a `TransportError` whose code is `aborted`. */
  signal?: AbortSignal;
  /** This call's time limit in ms (default: the client's). */
  timeoutMs?: number;
}

export interface ListOptions extends CallOptions {
  /** Long poll: answer when the set differs from the one that produced this index (compared for
   * equality only; 0 or absent answers at once). */
  index?: number | string | bigint;
  /** How long a long poll may wait: `30s`, `2m`, `1m30s`; the gateway's default and cap is 5 m. */
  wait?: string;
}

/** An answer that passed the status check. */
interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: unknown;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const MAX_BODY = 16 * 1024 * 1024;

/** A `wait` as milliseconds (`30s`, `2m`, `1m30s`, `500ms`), or undefined when it is not one. */
export function parseWait(wait: string): number | undefined {
  if (!/^(\d+(ms|s|m|h))+$/.test(wait)) return undefined;
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  for (const m of wait.matchAll(/(\d+)(ms|s|m|h)/g)) total += Number(m[1]) * unit[m[2]!]!;
  return total;
}

function seg(s: string): string {
  // Names are checked by the gateway as sent; encoding keeps a bad one (`a/b`) one segment, so
  // the answer is a 400 naming the field rather than some other endpoint.
  return encodeURIComponent(s);
}

/**
 * A twinreg client over mutual TLS, on Node's `https` with a keep-alive agent. Every method
 * resolves to the 200 answer's body (typed from docs/openapi.json) and rejects with a
 * `TwinregError` (an error answer) or a `TransportError` (no answer). Nothing is retried here
 * except a request whose kept-alive connection turned out closed; `KeepAlive` and `watch` retry.
 */
export class Client {
  readonly url: URL;
  readonly timeoutMs: number;
  private readonly agent: https.Agent;
  private readonly ownAgent: boolean;

  constructor(options: ClientOptions) {
    this.url = new URL(options.url);
    if (this.url.protocol !== "https:") {
      throw new TypeError(`twinreg client: url must be https://host:port, got ${options.url}`);
    }
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (options.agent) {
      this.agent = options.agent;
      this.ownAgent = false;
    } else {
      const cert = options.cert ?? (options.certFile ? readFileSync(options.certFile) : undefined);
      const key = options.key ?? (options.keyFile ? readFileSync(options.keyFile) : undefined);
      const ca = options.ca ?? (options.caFile ? readFileSync(options.caFile) : undefined);
      if (!cert || !key) {
        throw new TypeError("twinreg client: a client certificate and key (cert/key or certFile/keyFile) are required");
      }
      this.agent = new https.Agent({
        keepAlive: true,
        maxSockets: options.maxSockets ?? 8,
        cert,
        key,
        ...(ca ? { ca } : {}),
        ...(options.servername ? { servername: options.servername } : {}),
      });
      this.ownAgent = true;
    }
  }

  /** Registers an instance (an idempotent upsert). */
  register(service: string, id: string, body: RegisterBody, options?: CallOptions): Promise<Ok<"register">> {
    return this.call("PUT", this.instancePath(service, id), body, options);
  }

  /** Renews an instance. A `TwinregError` with code `unknown_instance` means: register again. */
  heartbeat(service: string, id: string, options?: CallOptions): Promise<Ok<"heartbeat">> {
    return this.call("PUT", `${this.instancePath(service, id)}/heartbeat`, undefined, options);
  }

  /** Deregisters an instance (idempotent: `existed` says whether a registry held it). */
  deregister(service: string, id: string, options?: CallOptions): Promise<Ok<"deregister">> {
    return this.call("DELETE", this.instancePath(service, id), undefined, options);
  }

  /** Takes an instance out of native discovery; it stays registered and listed (`drained`). */
  drain(service: string, id: string, options?: CallOptions): Promise<Ok<"drain">> {
    return this.call("PUT", `${this.instancePath(service, id)}/drain`, undefined, options);
  }

  /** Puts a drained instance back in rotation. */
  undrain(service: string, id: string, options?: CallOptions): Promise<Ok<"undrain">> {
    return this.call("DELETE", `${this.instancePath(service, id)}/drain`, undefined, options);
  }

  /** A service's instances; with `index`, a long poll (see `watch` for a loop of them). */
  async instances(service: string, options: ListOptions = {}): Promise<Ok<"list">> {
    const query = new URLSearchParams();
    const index = options.index === undefined ? "" : String(options.index);
    if (index !== "" && index !== "0") query.set("index", index);
    if (options.wait !== undefined) query.set("wait", options.wait);
    let timeoutMs = options.timeoutMs ?? this.timeoutMs;
    if (query.has("index")) {
      // The gateway holds the answer up to `wait` (5 minutes when not given).
      timeoutMs += options.wait === undefined ? 300_000 : (parseWait(options.wait) ?? 0);
    }
    const qs = query.toString();
    const path = `/v1/services/${seg(service)}/instances${qs ? `?${qs}` : ""}`;
    const answer = await this.send("GET", path, undefined, { ...options, timeoutMs });
    return answer.body as Ok<"list">;
  }

  /** Every service with a live instance, and how many each has. */
  services(options?: CallOptions): Promise<Ok<"services">> {
    return this.call("GET", "/v1/services", undefined, options);
  }

  /**
   * Long-polls a service's instance list: an async iterator that yields the current set at once,
   * then each set that differs from the last one yielded (the index is compared for equality
   * only). Transient failures are retried (honouring `Retry-After`, else backoff with full
   * jitter); an answer that cannot heal (403, a bad service name) ends the iteration with its
   * `TwinregError`. `close()`, `break` or the signal end it.
   */
  watch(service: string, options?: WatchOptions): Watch {
    return new Watch(this, service, options);
  }

  /** Closes the kept-alive connections (only the client's own agent). */
  close(): void {
    if (this.ownAgent) this.agent.destroy();
  }

  private instancePath(service: string, id: string): string {
    return `/v1/services/${seg(service)}/instances/${seg(id)}`;
  }

  private async call<T>(method: string, path: string, body: unknown, options?: CallOptions): Promise<T> {
    const answer = await this.send(method, path, body, options ?? {});
    return answer.body as T;
  }

  /** One request; a request whose reused keep-alive connection was already closed is sent once
   * more on a fresh one (every operation of the API is idempotent). */
  private async send(method: string, path: string, body: unknown, options: CallOptions): Promise<Answer> {
    try {
      return await this.sendOnce(method, path, body, options);
    } catch (err) {
      if (err instanceof StaleSocket) return this.sendOnce(method, path, body, options);
      throw err;
    }
  }

  private sendOnce(method: string, path: string, body: unknown, options: CallOptions): Promise<Answer> {
    const what = `${method} ${path}`;
    const target = new URL(this.url.pathname.replace(/\/$/, "") + path, this.url);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = { accept: "application/json" };
    if (payload) {
      headers["content-type"] = "application/json";
      headers["content-length"] = payload.length;
    } else if (method === "PUT" || method === "POST") {
      headers["content-length"] = 0;
    }
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const signal = options.signal;

    return new Promise<Answer>((resolve, reject) => {
      if (signal?.aborted) {
        reject(new TransportError("aborted", "request aborted", what));
        return;
      }
      let settled = false;
      let answered = false;
      const req = https.request(target, { method, agent: this.agent, headers });
      const finish = (err: Error | undefined, answer?: Answer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        if (err) reject(err);
        else resolve(answer!);
      };
      const fail = (err: Error) => {
        finish(err);
        req.destroy();
      };
      const timer = setTimeout(
        () => fail(new TransportError("timeout", `no answer within ${timeoutMs} ms`, what)),
        timeoutMs,
      );
      const onAbort = () => fail(new TransportError("aborted", "request aborted", what));
      signal?.addEventListener("abort", onAbort, { once: true });

      req.on("error", (err: NodeJS.ErrnoException) => {
        if (settled) return;
        const code = err.code ?? "ERR_TRANSPORT";
        if (!answered && req.reusedSocket && (code === "ECONNRESET" || code === "EPIPE")) {
          finish(new StaleSocket());
          return;
        }
        finish(new TransportError(code, `${code}: ${err.message}`, what, err));
      });
      req.on("response", (res) => {
        answered = true;
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_BODY) {
            fail(new TransportError("ERR_BODY_TOO_LARGE", `answer over ${MAX_BODY} bytes`, what));
            return;
          }
          chunks.push(chunk);
        });
        res.on("error", (err: NodeJS.ErrnoException) =>
          finish(new TransportError(err.code ?? "ERR_TRANSPORT", `answer broken off: ${err.message}`, what, err)),
        );
        res.on("aborted", () =>
          finish(new TransportError("ECONNRESET", "answer broken off", what)),
        );
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const status = res.statusCode ?? 0;
          let parsed: unknown;
          try {
            parsed = text === "" ? undefined : JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          if (status === 200 && parsed !== null && typeof parsed === "object") {
            finish(undefined, { status, headers: res.headers, body: parsed });
          } else {
            finish(errorFrom(status, res.headers, parsed, text, what));
          }
        });
      });
      req.end(payload);
    });
  }
}

/** A kept-alive connection the server had closed before the request went out. */
class StaleSocket extends Error {}

function errorFrom(
  status: number,
  headers: IncomingHttpHeaders,
  body: unknown,
  text: string,
  request: string,
): TwinregError {
  const retryAfter = parseRetryAfter(headers["retry-after"]);
  const b = body as Record<string, unknown> | undefined;
  if (status !== 200 && b && typeof b === "object" && typeof b.error === "string") {
    return new TwinregError({
      code: b.error as ErrorCode,
      status,
      detail: typeof b.message === "string" ? b.message : "(no message)",
      field: typeof b.field === "string" ? b.field : undefined,
      registries:
        b.registries && typeof b.registries === "object"
          ? (b.registries as Record<string, RegistryOutcome>)
          : undefined,
      retryAfter,
      request,
    });
  }
  const excerpt = text.length > 200 ? `${text.slice(0, 200)}...` : text;
  return new TwinregError({
    code: "unexpected_response",
    status,
    detail: `HTTP status ${status} with a body that is not the API's ${status === 200 ? "answer" : "error"}: ${JSON.stringify(excerpt)}`,
    retryAfter,
    request,
  });
}
