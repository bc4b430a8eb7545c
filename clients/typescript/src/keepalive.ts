import { EventEmitter } from "node:events";

import type { Client } from "./client.js";
import { TransportError, TwinregError, isRetryable } from "./errors.js";
import { Backoff, retryDelay, sleep } from "./retry.js";
import type { Deregistered, HeartbeatAnswer, RegisterBody, Registered } from "./types.js";

export interface KeepAliveOptions {
  service: string;
  id: string;
  address: string;
  port: number;
  tags?: string[];
  meta?: Record<string, string>;
  /** 5–3600 (default 30). A heartbeat goes out every ttl/3, a little early by `jitter`. */
  ttlSeconds?: number;
  /** Fraction of the interval a beat may come early, spreading a fleet's beats (default 0.1). */
  jitter?: number;
  /** Backoff after a failure without `Retry-After`: full jitter from `backoffBaseMs` (250),
   * doubling up to `backoffMaxMs` (30 s), and never later than the next beat would be. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** How long `stop()` may spend deregistering, retries included (default 10 s). */
  deregisterBudgetMs?: number;
}

export type KeepAliveState =
  /** Not started. */
  | "idle"
  /** Registering (first, or again after `unknown_instance`). */
  | "registering"
  /** Registered and heartbeating. */
  | "registered"
  /** `stop()` called: deregistering. */
  | "stopping"
  /** Stopped (deregistered, or the budget ran out). */
  | "stopped"
  /** The gateway refused for good (400, 403, 413): retrying cannot fix it. */
  | "failed";

export type Operation = "register" | "heartbeat" | "deregister";

export interface RetryEvent {
  op: Operation;
  error: Error;
  /** How long until the next try. */
  delayMs: number;
}

export interface StopResult {
  /** The deregistration's answer, when it succeeded. */
  deregistered?: Deregistered;
  /** Why it did not, when it did not (the registries' TTL removes the instance anyway). */
  error?: Error;
}

/** The events a `KeepAlive` emits, with their arguments. */
export interface KeepAliveEvents {
  state: [state: KeepAliveState, previous: KeepAliveState];
  /** Each successful registration; `count` counts them (1 at first, 2 after a re-registration). */
  registered: [answer: Registered, count: number];
  heartbeat: [answer: HeartbeatAnswer];
  /** A heartbeat answered 404 `unknown_instance`: the gateway forgot the instance; registering
   * again at once. */
  lost: [error: TwinregError];
  /** A failure that will be retried. */
  retry: [event: RetryEvent];
  /** The gateway refused for good; the loop has ended (`state` is `failed`). */
  failed: [error: Error];
  deregistered: [answer: Deregistered];
  stopped: [result: StopResult];
}

type Listener<E extends keyof KeepAliveEvents> = (...args: KeepAliveEvents[E]) => void;

export interface KeepAlive {
  on<E extends keyof KeepAliveEvents>(event: E, listener: Listener<E>): this;
  once<E extends keyof KeepAliveEvents>(event: E, listener: Listener<E>): this;
  off<E extends keyof KeepAliveEvents>(event: E, listener: Listener<E>): this;
  emit<E extends keyof KeepAliveEvents>(event: E, ...args: KeepAliveEvents[E]): boolean;
}

/**
 * Keeps one instance registered: registers it, heartbeats every ttl/3 (with jitter), registers
 * again when a heartbeat answers 404 `unknown_instance`, waits `Retry-After` on 429/503, backs off
 * with full jitter on transport errors, and deregisters on `stop()` within a bounded budget.
 * Transient failures never end it; a refusal that cannot heal (400, 403, 413) does (`failed`).
 *
 * Observe it through `state`, `registrations`, `lastError` and the events in `KeepAliveEvents`.
 */
export class KeepAlive extends EventEmitter {
  readonly service: string;
  readonly id: string;
  private readonly body: RegisterBody;
  private readonly jitter: number;
  private readonly backoff: Backoff;
  private readonly budgetMs: number;
  private readonly halt = new AbortController();
  private current: KeepAliveState = "idle";
  private count = 0;
  private ttlSeconds: number;
  private registerSent = false;
  private loop: Promise<void> | undefined;
  private stopping: Promise<StopResult> | undefined;
  private last: Error | undefined;
  private readonly first: Promise<Registered>;
  private settleFirst!: { resolve: (r: Registered) => void; reject: (e: Error) => void };

  constructor(
    private readonly client: Client,
    options: KeepAliveOptions,
  ) {
    super();
    this.service = options.service;
    this.id = options.id;
    this.ttlSeconds = options.ttlSeconds ?? 30;
    this.body = {
      address: options.address,
      port: options.port,
      ttl_seconds: this.ttlSeconds,
      ...(options.tags ? { tags: options.tags } : {}),
      ...(options.meta ? { meta: options.meta } : {}),
    };
    this.jitter = Math.min(Math.max(options.jitter ?? 0.1, 0), 0.5);
    this.backoff = new Backoff(options.backoffBaseMs ?? 250, options.backoffMaxMs ?? 30_000);
    this.budgetMs = options.deregisterBudgetMs ?? 10_000;
    this.first = new Promise<Registered>((resolve, reject) => {
      this.settleFirst = { resolve, reject };
    });
    this.first.catch(() => undefined); // a caller that never asks is not an unhandled rejection
  }

  get state(): KeepAliveState {
    return this.current;
  }

  /** How many registrations succeeded (more than 1 after the gateway forgot the instance). */
  get registrations(): number {
    return this.count;
  }

  /** The last failure, retried or not. */
  get lastError(): Error | undefined {
    return this.last;
  }

  /** The heartbeat interval in ms before jitter: ttl/3 of the registered TTL. */
  get intervalMs(): number {
    return (this.ttlSeconds * 1000) / 3;
  }

  /** Starts the loop (once; later calls do nothing). */
  start(): this {
    if (!this.loop && !this.stopping) this.loop = this.run();
    return this;
  }

  /** Resolves with the first registration's answer; rejects when the keep-alive fails or stops
   * first. */
  ready(): Promise<Registered> {
    return this.first;
  }

  /** Stops heartbeating and deregisters (when a registration was sent), retrying transient
   * failures within `deregisterBudgetMs`. Never rejects; later calls return the same result. */
  stop(): Promise<StopResult> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private setState(next: KeepAliveState): void {
    const previous = this.current;
    if (previous === next) return;
    this.current = next;
    this.emit("state", next, previous);
  }

  private nextBeat(): number {
    return this.intervalMs * (1 - this.jitter * Math.random());
  }

  private async run(): Promise<void> {
    const signal = this.halt.signal;
    let registered = false;
    while (!signal.aborted) {
      let delay: number;
      if (!registered) {
        this.setState("registering");
        try {
          this.registerSent = true;
          const answer = await this.client.register(this.service, this.id, this.body, { signal });
          registered = true;
          this.count++;
          this.ttlSeconds = answer.ttl_seconds || this.ttlSeconds;
          this.backoff.reset();
          this.setState("registered");
          this.emit("registered", answer, this.count);
          this.settleFirst.resolve(answer);
          delay = this.nextBeat();
        } catch (err) {
          if (signal.aborted) break;
          const d = this.failure("register", err as Error);
          if (d === undefined) return;
          delay = d;
        }
      } else {
        try {
          const answer = await this.client.heartbeat(this.service, this.id, { signal });
          this.backoff.reset();
          this.emit("heartbeat", answer);
          delay = this.nextBeat();
        } catch (err) {
          if (signal.aborted) break;
          if (err instanceof TwinregError && err.code === "unknown_instance") {
            this.last = err;
            registered = false;
            this.emit("lost", err);
            continue;
          }
          const d = this.failure("heartbeat", err as Error);
          if (d === undefined) return;
          delay = d;
        }
      }
      await sleep(delay, signal);
    }
  }

  /** The delay before retrying after `err`, or undefined when it cannot heal (the loop ends). */
  private failure(op: Operation, err: Error): number | undefined {
    this.last = err;
    if (!isRetryable(err)) {
      this.setState("failed");
      this.emit("failed", err);
      this.settleFirst.reject(err);
      return undefined;
    }
    const delayMs = retryDelay(err, this.backoff, this.intervalMs);
    this.emit("retry", { op, error: err, delayMs });
    return delayMs;
  }

  private async shutdown(): Promise<StopResult> {
    const failed = this.current === "failed";
    this.setState("stopping");
    this.halt.abort();
    await this.loop;
    this.settleFirst.reject(new Error(`keep-alive of ${this.service}/${this.id} stopped before it registered`));
    let result: StopResult = {};
    if (this.registerSent && !failed) result = await this.deregister();
    this.setState("stopped");
    this.emit("stopped", result);
    return result;
  }

  private async deregister(): Promise<StopResult> {
    const deadline = Date.now() + this.budgetMs;
    const backoff = new Backoff(this.backoff.baseMs, Math.min(this.backoff.maxMs, 2000));
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) {
        const error =
          this.last ??
          new TransportError("timeout", `deregistration budget of ${this.budgetMs} ms spent`, `DELETE ${this.id}`);
        return { error };
      }
      try {
        const answer = await this.client.deregister(this.service, this.id, {
          timeoutMs: Math.min(left, this.client.timeoutMs),
        });
        this.emit("deregistered", answer);
        return { deregistered: answer };
      } catch (err) {
        this.last = err as Error;
        if (!isRetryable(err)) return { error: err as Error };
        const delayMs = Math.min(retryDelay(err, backoff), Math.max(0, deadline - Date.now()));
        if (delayMs >= deadline - Date.now()) return { error: err as Error };
        this.emit("retry", { op: "deregister", error: err as Error, delayMs });
        await sleep(delayMs);
      }
    }
  }
}
