import type { ErrorCode, RegistryOutcome } from "./types.js";

/** The codes a retry can fix: the gateway says when (`Retry-After`) for the first two. */
const RETRYABLE: ReadonlySet<string> = new Set(["unavailable", "rate_limited", "request_timeout"]);

/**
 * An answer from the gateway other than 200: the API's error body
 * (`{"error", "message", "field", "registries"}`) with the HTTP status and `Retry-After`.
 *
 * `message` names the code and the field (`invalid_request (field "port"): port: must be an
 * integer from 1 to 65535`); the gateway's own text is `detail`. An answer that is not the API's
 * error shape (a proxy's HTML page, say) has the code `unexpected_response`.
 */
export class TwinregError extends Error {
  override readonly name = "TwinregError";
  /** The API's error code (`invalid_request`, `forbidden`, `unknown_instance`, ...). */
  readonly code: ErrorCode | "unexpected_response";
  /** The HTTP status (400, 403, 404, 503, ...). */
  readonly status: number;
  /** The request field at fault, for `invalid_request`. */
  readonly field: string | undefined;
  /** Seconds to wait before retrying, from `Retry-After` (429 and 503 answers). */
  readonly retryAfter: number | undefined;
  /** Each registry's outcome, when the request reached them (503, 404 `unknown_instance`). */
  readonly registries: Record<string, RegistryOutcome> | undefined;
  /** The gateway's message, as it sent it. */
  readonly detail: string;
  /** The request, as `METHOD /path`. */
  readonly request: string;

  constructor(init: {
    code: ErrorCode | "unexpected_response";
    status: number;
    detail: string;
    request: string;
    field?: string | undefined;
    retryAfter?: number | undefined;
    registries?: Record<string, RegistryOutcome> | undefined;
  }) {
    const where = init.field ? ` (field "${init.field}")` : "";
    super(`${init.code}${where}: ${init.detail} [${init.request}]`);
    this.code = init.code;
    this.status = init.status;
    this.field = init.field;
    this.retryAfter = init.retryAfter;
    this.registries = init.registries;
    this.detail = init.detail;
    this.request = init.request;
  }

  /**
   * Whether the same request may succeed later: `unavailable`, `rate_limited`,
   * `request_timeout`, or a 5xx answer that is not the API's.
   */
  get retryable(): boolean {
    return RETRYABLE.has(this.code) || (this.code === "unexpected_response" && this.status >= 500);
  }
}

/**
 * The request got no answer: the connection failed or broke (`code` is Node's, e.g.
 * `ECONNREFUSED`, `ECONNRESET`, `ERR_TLS_CERT_ALTNAME_INVALID`), it timed out (`timeout`), or it
 * was aborted through its signal (`aborted`). Always worth retrying, except `aborted`.
 */
export class TransportError extends Error {
  override readonly name = "TransportError";
  readonly code: string;
  readonly request: string;

  constructor(code: string, message: string, request: string, cause?: unknown) {
    super(`${message} [${request}]`, cause === undefined ? undefined : { cause });
    this.code = code;
    this.request = request;
  }
}

/** Whether `err` is worth retrying: a transport failure (not an abort) or a retryable answer. */
export function isRetryable(err: unknown): boolean {
  if (err instanceof TransportError) return err.code !== "aborted";
  if (err instanceof TwinregError) return err.retryable;
  return false;
}

/** `Retry-After` as seconds: a number of seconds, or an HTTP date. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined || v.trim() === "") return undefined;
  if (/^\s*\d+\s*$/.test(v)) return Number(v);
  const at = Date.parse(v);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, (at - now) / 1000);
}
