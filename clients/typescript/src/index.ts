export { Client, parseWait } from "./client.js";
export type { CallOptions, ClientOptions, ListOptions, Pem } from "./client.js";
export { TransportError, TwinregError, isRetryable, parseRetryAfter } from "./errors.js";
export { KeepAlive } from "./keepalive.js";
export type {
  KeepAliveEvents,
  KeepAliveOptions,
  KeepAliveState,
  Operation,
  RetryEvent,
  StopResult,
} from "./keepalive.js";
export { Backoff } from "./retry.js";
export { Watch } from "./watch.js";
export type { WatchOptions } from "./watch.js";
export type * from "./types.js";
