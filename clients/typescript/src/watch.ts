import type { Client } from "./client.js";
import { TransportError, TwinregError, isRetryable } from "./errors.js";
import { Backoff, retryDelay, sleep } from "./retry.js";
import type { InstancesAnswer } from "./types.js";

export interface WatchOptions {
  /** How long each long poll may wait (default `30s`). */
  wait?: string;
  /** Ends the watch. */
  signal?: AbortSignal;
  /** Backoff after a failure without `Retry-After` (default 250 ms doubling to 30 s). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Told of each failure that will be retried, and after how long. */
  onRetry?: (error: Error, delayMs: number) => void;
}

/**
 * The async iterator `Client.watch` returns. Each `next()` resolves with the first answer whose
 * index differs from the last one yielded (the first answer always counts). The index is an
 * opaque content hash: it is compared for equality and sent back, never ordered.
 */
export class Watch implements AsyncIterableIterator<InstancesAnswer> {
  private readonly wait: string;
  private readonly backoff: Backoff;
  private readonly onRetry: ((error: Error, delayMs: number) => void) | undefined;
  private readonly stop = new AbortController();
  /** Sent with the next poll; undefined asks for an immediate answer. */
  private pollIndex: string | undefined;
  /** The index of the last answer yielded. */
  private yielded: string | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private failed: Error | undefined;

  constructor(
    private readonly client: Client,
    readonly service: string,
    options: WatchOptions = {},
  ) {
    this.wait = options.wait ?? "30s";
    this.backoff = new Backoff(options.backoffBaseMs ?? 250, options.backoffMaxMs ?? 30_000);
    this.onRetry = options.onRetry;
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) this.stop.abort();
      else signal.addEventListener("abort", () => this.close(), { once: true });
    }
  }

  /** The index of the last answer yielded. */
  get index(): string | undefined {
    return this.yielded;
  }

  get closed(): boolean {
    return this.stop.signal.aborted;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<InstancesAnswer>> {
    // One poll at a time, in call order.
    const result = this.queue.then(() => this.poll());
    this.queue = result.catch(() => undefined);
    return result;
  }

  async return(): Promise<IteratorResult<InstancesAnswer>> {
    this.close();
    return { done: true, value: undefined };
  }

  /** Ends the watch: a poll in flight is aborted and every `next()` resolves as done. */
  close(): void {
    this.stop.abort();
  }

  private async poll(): Promise<IteratorResult<InstancesAnswer>> {
    for (;;) {
      if (this.failed) throw this.failed;
      if (this.closed) return { done: true, value: undefined };
      const started = Date.now();
      let answer: InstancesAnswer;
      try {
        answer = await this.client.instances(
          this.service,
          this.pollIndex === undefined
            ? { signal: this.stop.signal }
            : { index: this.pollIndex, wait: this.wait, signal: this.stop.signal },
        );
      } catch (err) {
        if (this.closed) return { done: true, value: undefined };
        if (err instanceof TwinregError && err.code === "invalid_request" && err.field === "index") {
          // The gateway does not take our index: start over with an immediate answer.
          this.pollIndex = undefined;
        } else if (!isRetryable(err)) {
          this.failed = err as Error;
          this.close();
          throw err;
        }
        const delay = retryDelay(err, this.backoff);
        this.onRetry?.(err as Error, delay);
        await sleep(delay, this.stop.signal);
        continue;
      }
      this.backoff.reset();
      if (this.closed) return { done: true, value: undefined };
      const index = typeof answer.index === "number" && answer.index > 0 ? String(answer.index) : undefined;
      if (index === undefined) {
        // No usable index: start over, without yielding the same set twice.
        this.pollIndex = undefined;
        const err = new TransportError("ERR_NO_INDEX", "answer without an index", `GET ${this.service}`);
        const delay = 1000 + Math.floor(Math.random() * 1000);
        this.onRetry?.(err, delay);
        await sleep(delay, this.stop.signal);
        continue;
      }
      const wasPolling = this.pollIndex !== undefined;
      this.pollIndex = index;
      if (index !== this.yielded) {
        this.yielded = index;
        return { done: false, value: answer };
      }
      if (wasPolling && Date.now() - started < 1000) {
        // Unchanged yet answered early (a replica shutting down ends its long polls): pause
        // rather than spin.
        await sleep(500 + Math.floor(Math.random() * 1000), this.stop.signal);
      }
    }
  }
}
