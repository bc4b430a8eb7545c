//! mini-consul, the Consul-API-compatible test server, checked on its own: every test starts the
//! real binary on `127.0.0.1:0` and talks to it over real HTTP(S), against the request/response
//! examples of Consul's API documentation and the rules in `docs/consul.md`, and against the
//! independent rs-consul client.

mod acl;
mod agent;
mod alias;
mod blocking;
mod errors;
mod health;
mod maintenance;
mod metrics;
mod probes;
mod process;
mod rs_consul_client;
mod support;
mod tls;
mod ttl;
