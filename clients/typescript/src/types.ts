// Names for the generated types (src/generated/openapi.ts, from docs/openapi.json). Every shape the
// client sends or returns is one of these, so a change to the description changes the types.
import type { components, operations, paths } from "./generated/openapi.js";

export type { components, operations, paths };

type Schemas = components["schemas"];

/** The body of a registration (`PUT /v1/services/{service}/instances/{id}`). */
export type RegisterBody = Schemas["RegisterBody"];
/** A registration's answer. */
export type Registered = Schemas["Registered"];
/** A heartbeat's answer. */
export type HeartbeatAnswer = Schemas["HeartbeatAnswer"];
/** A deregistration's answer. */
export type Deregistered = Schemas["Deregistered"];
/** A drain's or an undrain's answer. */
export type Drained = Schemas["Drained"];
/** A service's instances (a list, or one answer of a long poll). */
export type InstancesAnswer = Schemas["InstancesAnswer"];
/** One instance of a list: the union of both registries, etcd's record winning. */
export type InstanceView = Schemas["InstanceView"];
/** The services and their instance counts. */
export type ServicesAnswer = Schemas["ServicesAnswer"];
export type ServiceCount = Schemas["ServiceCount"];
/** What one registry did with a request. */
export type RegistryOutcome = Schemas["RegistryOutcome"];
/** `etcd` or `consul`. */
export type RegistryKind = Schemas["RegistryKind"];
/** The error codes of the API contract. */
export type ErrorCode = Schemas["ErrorCode"];
/** An error answer's body: `{"error", "message", "field", "registries"}`. */
export type ErrorBody = Schemas["Error"];

/** The JSON body of an operation's 200 answer, as the description gives it. */
export type Ok<Op extends keyof operations> = operations[Op]["responses"] extends {
  200: { content: { "application/json": infer T } };
}
  ? T
  : never;
