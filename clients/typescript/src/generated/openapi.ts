/**
 * twinreg's REST API types, generated from docs/openapi.json by openapi-typescript 7.13.0.
 * Do not edit: run `npm run generate` (in clients/typescript) after the description changes;
 * `npm run generate -- --check` fails while this file is out of date.
 */

export interface paths {
    "/v1/services": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * Lists the services and their instance counts.
         * @description Only the services the caller may read.
         */
        get: operations["services"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/services/{service}/instances": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * Lists a service's instances.
         * @description The union of both registries, one entry per id, the primary's (etcd's) record winning, with
         *     `sources` saying where each was found; it answers from one registry when the other is down.
         *     With `?index=N`, waits (at most `wait`) until the set differs from the one that produced `N`
         *     (an instance added, changed or removed), else answers the same index after `wait`.
         */
        get: operations["list"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/services/{service}/instances/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        /**
         * Registers an instance (an idempotent upsert) in both registries at once.
         * @description 200 when at least one registry accepted it (`degraded` when one did not: that registry is
         *     written again in the background until it accepts, the instance is deregistered, or its TTL
         *     lapses). The same request again changes nothing; a changed address, port, tags or meta
         *     replaces the record. A new registration of a drained instance puts it back in rotation.
         */
        put: operations["register"];
        post?: never;
        /**
         * Deregisters an instance from both registries.
         * @description Idempotent: `existed` says whether a registry held it. A registry that missed the delete is
         *     re-driven in the background.
         */
        delete: operations["deregister"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/services/{service}/instances/{id}/drain": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        /**
         * Drains an instance: out of native discovery, still registered and heartbeating.
         * @description etcd's gRPC resolver drops it, Consul's passing queries and DNS leave it out (maintenance
         *     mode); lists and watches show `drained: true`. Idempotent. Takes no body (none, or `{}`).
         */
        put: operations["drain"];
        post?: never;
        /**
         * Undrains an instance: back in native discovery.
         * @description Idempotent. Takes no body (none, or `{}`).
         */
        delete: operations["undrain"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/services/{service}/instances/{id}/heartbeat": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        /**
         * Renews an instance's TTL (every ttl/3).
         * @description To the replica that owns it, answered from memory (`coalesced`); to another, the instance is
         *     taken over. 404 when no registry knows it: register again.
         */
        put: operations["heartbeat"];
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
}
export type webhooks = Record<string, never>;
export interface components {
    schemas: {
        /** @description A deregister's answer. */
        Deregistered: {
            /** @description Always `true` in an answer. */
            deregistered: boolean;
            /** @description Whether a registry held the instance. */
            existed: boolean;
            /** @description A registry missed the delete; twinreg re-drives it in the background. */
            degraded: boolean;
            registries: {
                [key: string]: components["schemas"]["RegistryOutcome"];
            };
        };
        /** @description A drain's or an undrain's answer. */
        Drained: {
            /** @description Whether the instance is drained now. */
            drained: boolean;
            service: string;
            id: string;
            /** @description A registry did not accept it; twinreg keeps writing it there in the background. */
            degraded: boolean;
            registries: {
                [key: string]: components["schemas"]["RegistryOutcome"];
            };
        };
        /** @description An error answer. */
        Error: {
            error: components["schemas"]["ErrorCode"];
            /** @description What went wrong and what to do, for a person. */
            message: string;
            /** @description The request field at fault, for `invalid_request`. */
            field?: string | null;
            /**
             * @description Each registry's outcome, when the request reached them (503 `unavailable`, 404
             *     `unknown_instance`).
             */
            registries?: {
                [key: string]: components["schemas"]["RegistryOutcome"];
            } | null;
        };
        /**
         * @description The error codes of the API contract.
         * @enum {string}
         */
        ErrorCode: "invalid_request" | "forbidden" | "unknown_instance" | "payload_too_large" | "unavailable" | "not_found" | "rate_limited" | "request_timeout";
        /**
         * @description A heartbeat's answer (a struct, not a `json!` map: the hot path builds no intermediate JSON
         *     tree).
         */
        HeartbeatAnswer: {
            /** @description Always `true` in an answer. */
            ok: boolean;
            /** @description A registry does not hold its copy now (it is being written again) or is not answering. */
            degraded: boolean;
            registries: {
                [key: string]: components["schemas"]["RegistryOutcome"];
            };
        };
        /** @description One instance of a list: the union of both registries, the primary's (etcd's) record winning. */
        InstanceView: {
            id: string;
            address: string;
            /** Format: int32 */
            port: number;
            tags: string[];
            meta: {
                [key: string]: string;
            };
            /** Format: int32 */
            ttl_seconds: number;
            /** @description Out of native discovery (drained), still registered. */
            drained: boolean;
            /** @description The registries holding it. */
            sources: components["schemas"]["RegistryKind"][];
        };
        /** @description A list's answer. */
        InstancesAnswer: {
            service: string;
            index: number;
            instances: components["schemas"]["InstanceView"][];
            /** @description Each registry's part in this answer. */
            registries: {
                [key: string]: components["schemas"]["RegistryOutcome"];
            };
        };
        /**
         * @description The register body. Unknown fields are rejected (400 naming the field); `null` is the same as
         *     leaving a field out.
         */
        RegisterBody: {
            /**
             * @description An IPv4/IPv6 literal (not the unspecified 0.0.0.0 or ::) or an RFC 1123 host name (a trailing dot allowed), at most 253 characters.
             * @example 10.0.0.5
             */
            address: string;
            /**
             * Format: int32
             * @example 8080
             */
            port: number;
            /** @description At most 32 tags, each 1-128 characters without control characters. */
            tags?: string[] | null;
            /** @description At most 64 entries; keys 1-128 of [A-Za-z0-9_-], not starting with consul- (Consul reserves it); values at most 512 characters. */
            meta?: {
                [key: string]: string;
            } | null;
            /**
             * Format: int32
             * @description 5–3600; 30 when not given.
             * @default 30
             */
            ttl_seconds?: number | null;
        };
        /** @description A register's answer. */
        Registered: {
            /** @description Always `true` in an answer. */
            registered: boolean;
            service: string;
            id: string;
            /** Format: int32 */
            ttl_seconds: number;
            /** @description A registry did not accept it; twinreg keeps writing it there in the background. */
            degraded: boolean;
            registries: {
                [key: string]: components["schemas"]["RegistryOutcome"];
            };
        };
        /**
         * @description Which registry. The primary is etcd: its record wins where the two disagree.
         * @enum {string}
         */
        RegistryKind: "etcd" | "consul";
        /** @description What one registry did with the request. `etcd` and `consul` are the keys of `registries`. */
        RegistryOutcome: {
            ok: boolean;
            /**
             * Format: int64
             * @description When `ok`: how long the registry took (0 when no call was needed).
             */
            latency_ms?: number | null;
            /** @description When not `ok`: why, e.g. "timed out after 1500 ms". */
            error?: string | null;
            /** @description A heartbeat found the instance missing in this registry and wrote it back. */
            restored?: boolean | null;
            /** @description A heartbeat needed no call to this registry (every heartbeat to the owning replica). */
            coalesced?: boolean | null;
        };
        ServiceCount: {
            name: string;
            instances: number;
        };
        /** @description The services and how many instances each has. */
        ServicesAnswer: {
            services: components["schemas"]["ServiceCount"][];
            registries: {
                [key: string]: components["schemas"]["RegistryOutcome"];
            };
        };
    };
    responses: never;
    parameters: never;
    requestBodies: never;
    headers: never;
    pathItems: never;
}
export type $defs = Record<string, never>;
export interface operations {
    services: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description the services */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ServicesAnswer"];
                };
            };
            /**
             * @description `invalid_request`: the service name, `index` or `wait` breaks the API's rules (`field`
             *     names it).
             */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `forbidden`: reads are restricted (`authz.reads = "owner"`) and the identity may not
             *     read this service.
             */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `rate_limited`: the identity is over its request budget; retry after `Retry-After`. */
            429: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `unavailable`: no registry answered; retry after `Retry-After`. */
            503: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
        };
    };
    list: {
        parameters: {
            query?: {
                index?: number;
                /**
                 * @description How long to wait at most: a duration with units (`30s`, `2m`, `1m30s`); at most, and by
                 *     default, 5 minutes. Only an `index` makes the list wait, but a `wait` that is not a
                 *     duration is refused even without one.
                 * @example 30s
                 */
                wait?: string;
            };
            header?: never;
            path: {
                /**
                 * @description 1–63 characters `[a-z0-9-]`, starting with a letter, ending with a letter or digit.
                 * @example payments
                 */
                service: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description the instances */
            200: {
                headers: {
                    /** @description the answer's index */
                    "X-Twinreg-Index"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["InstancesAnswer"];
                };
            };
            /**
             * @description `invalid_request`: the service name, `index` or `wait` breaks the API's rules (`field`
             *     names it).
             */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `forbidden`: reads are restricted (`authz.reads = "owner"`) and the identity may not
             *     read this service.
             */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `rate_limited`: the identity is over its request budget; retry after `Retry-After`. */
            429: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `unavailable`: no registry answered; retry after `Retry-After`. */
            503: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
        };
    };
    register: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /**
                 * @description The service: 1–63 characters `[a-z0-9-]`, starting with a letter, ending with a letter or
                 *     digit.
                 * @example payments
                 */
                service: string;
                /**
                 * @description The instance: 1–128 characters `[A-Za-z0-9._-]`, not `.` or `..`.
                 * @example pay-1
                 */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["RegisterBody"];
            };
        };
        responses: {
            /** @description registered */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Registered"];
                };
            };
            /**
             * @description `invalid_request`: a path or body field breaks the API's rules (`field` names it);
             *     nothing was written.
             */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `forbidden`: the caller's identity may not write this service. */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `request_timeout`: the body did not arrive within `limits.body_read_timeout`. */
            408: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `payload_too_large`: a body over 64 KiB. */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `rate_limited`: the identity is over its request budget; retry after `Retry-After`. */
            429: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `unavailable`: no registry accepted it (`registries` says why) or the request ran out
             *     of time; retry after `Retry-After`.
             */
            503: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
        };
    };
    deregister: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /**
                 * @description The service: 1–63 characters `[a-z0-9-]`, starting with a letter, ending with a letter or
                 *     digit.
                 * @example payments
                 */
                service: string;
                /**
                 * @description The instance: 1–128 characters `[A-Za-z0-9._-]`, not `.` or `..`.
                 * @example pay-1
                 */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description deregistered */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Deregistered"];
                };
            };
            /**
             * @description `invalid_request`: the path (or a drain's body) breaks the API's rules (`field` names
             *     it); nothing was written.
             */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `forbidden`: the caller's identity may not write this service. */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `unknown_instance`: no registry knows the instance (register it again). A deregister
             *     never answers 404: it is idempotent.
             */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `request_timeout`: a drain's body did not arrive within `limits.body_read_timeout`. */
            408: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `payload_too_large`: a drain's body over 64 KiB. */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `rate_limited`: the identity is over its request budget; retry after `Retry-After`. */
            429: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `unavailable`: no registry could be reached (`registries` says why) or the request ran
             *     out of time; retry after `Retry-After`.
             */
            503: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
        };
    };
    drain: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /**
                 * @description The service: 1–63 characters `[a-z0-9-]`, starting with a letter, ending with a letter or
                 *     digit.
                 * @example payments
                 */
                service: string;
                /**
                 * @description The instance: 1–128 characters `[A-Za-z0-9._-]`, not `.` or `..`.
                 * @example pay-1
                 */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description drained */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Drained"];
                };
            };
            /**
             * @description `invalid_request`: the path (or a drain's body) breaks the API's rules (`field` names
             *     it); nothing was written.
             */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `forbidden`: the caller's identity may not write this service. */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `unknown_instance`: no registry knows the instance (register it again). A deregister
             *     never answers 404: it is idempotent.
             */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `request_timeout`: a drain's body did not arrive within `limits.body_read_timeout`. */
            408: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `payload_too_large`: a drain's body over 64 KiB. */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `rate_limited`: the identity is over its request budget; retry after `Retry-After`. */
            429: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `unavailable`: no registry could be reached (`registries` says why) or the request ran
             *     out of time; retry after `Retry-After`.
             */
            503: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
        };
    };
    undrain: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /**
                 * @description The service: 1–63 characters `[a-z0-9-]`, starting with a letter, ending with a letter or
                 *     digit.
                 * @example payments
                 */
                service: string;
                /**
                 * @description The instance: 1–128 characters `[A-Za-z0-9._-]`, not `.` or `..`.
                 * @example pay-1
                 */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description undrained */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Drained"];
                };
            };
            /**
             * @description `invalid_request`: the path (or a drain's body) breaks the API's rules (`field` names
             *     it); nothing was written.
             */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `forbidden`: the caller's identity may not write this service. */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `unknown_instance`: no registry knows the instance (register it again). A deregister
             *     never answers 404: it is idempotent.
             */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `request_timeout`: a drain's body did not arrive within `limits.body_read_timeout`. */
            408: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `payload_too_large`: a drain's body over 64 KiB. */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `rate_limited`: the identity is over its request budget; retry after `Retry-After`. */
            429: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `unavailable`: no registry could be reached (`registries` says why) or the request ran
             *     out of time; retry after `Retry-After`.
             */
            503: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
        };
    };
    heartbeat: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /**
                 * @description The service: 1–63 characters `[a-z0-9-]`, starting with a letter, ending with a letter or
                 *     digit.
                 * @example payments
                 */
                service: string;
                /**
                 * @description The instance: 1–128 characters `[A-Za-z0-9._-]`, not `.` or `..`.
                 * @example pay-1
                 */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description renewed */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["HeartbeatAnswer"];
                };
            };
            /**
             * @description `invalid_request`: the path (or a drain's body) breaks the API's rules (`field` names
             *     it); nothing was written.
             */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `forbidden`: the caller's identity may not write this service. */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `unknown_instance`: no registry knows the instance (register it again). A deregister
             *     never answers 404: it is idempotent.
             */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `request_timeout`: a drain's body did not arrive within `limits.body_read_timeout`. */
            408: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `payload_too_large`: a drain's body over 64 KiB. */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /** @description `rate_limited`: the identity is over its request budget; retry after `Retry-After`. */
            429: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
            /**
             * @description `unavailable`: no registry could be reached (`registries` says why) or the request ran
             *     out of time; retry after `Retry-After`.
             */
            503: {
                headers: {
                    /** @description seconds */
                    "Retry-After"?: number;
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Error"];
                };
            };
        };
    };
}
