import { TwinregError } from "./errors.js";

/** Exponential backoff with full jitter: attempt n waits a random time in [0, min(max, base*2^n)). */
export class Backoff {
  private attempt = 0;

  constructor(
    readonly baseMs = 250,
    readonly maxMs = 30_000,
    private readonly random: () => number = Math.random,
  ) {}

  /** The next delay in ms, at most `cap` (e.g. sooner than the next heartbeat). */
  next(cap = Infinity): number {
    const ceiling = Math.min(this.maxMs, cap, this.baseMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return Math.floor(this.random() * ceiling);
  }

  reset(): void {
    this.attempt = 0;
  }
}

/**
 * How long to wait before retrying after `err`: the gateway's `Retry-After` when it sent one
 * (429, 503), else the backoff's next delay.
 */
export function retryDelay(err: unknown, backoff: Backoff, cap = Infinity): number {
  if (err instanceof TwinregError && err.retryAfter !== undefined) {
    return Math.ceil(err.retryAfter * 1000);
  }
  return backoff.next(cap);
}

/** Waits `ms`, or less when `signal` aborts (it never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal?.addEventListener("abort", done, { once: true });
  });
}
