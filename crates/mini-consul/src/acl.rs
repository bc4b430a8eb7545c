//! ACLs: off by default; with `--acl-token`, default-deny with that token as the only
//! (management) token, as a dev agent bootstrapped with `acl.tokens.initial_management` is.
//!
//! The request's token comes from `?token=`, then `X-Consul-Token`, then
//! `Authorization: Bearer <token>`; none means the anonymous token, which has no policies.

use crate::http::{ApiError, Req};

/// The anonymous token's AccessorID, as Consul reports it in permission errors.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";

/// Who the request acts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authz {
    /// ACLs are disabled: everything is allowed.
    Disabled,
    /// The configured management token.
    Management,
    /// No token: default deny, nothing granted.
    Anonymous,
}

/// Consul's `parseToken`: the first of `?token=`, `X-Consul-Token`, `Authorization: Bearer`.
pub fn request_token(req: &Req) -> String {
    if let Some(t) = req.query("token").filter(|t| !t.is_empty()) {
        return t.to_owned();
    }
    if let Some(t) = req.header("x-consul-token").filter(|t| !t.is_empty()) {
        return t.to_owned();
    }
    if let Some(auth) = req.header("authorization") {
        let parts: Vec<&str> = auth.split(' ').collect();
        if parts.len() > 1 && parts[0].eq_ignore_ascii_case("bearer") {
            let value = parts[1..].join(" ");
            return value
                .trim()
                .split(' ')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
        }
    }
    String::new()
}

/// Resolves a token: an unknown token is `403 ACL not found`.
pub fn resolve(configured: Option<&str>, token: &str) -> Result<Authz, ApiError> {
    match configured {
        None => Ok(Authz::Disabled),
        Some(_) if token.is_empty() => Ok(Authz::Anonymous),
        Some(mgmt) if constant_time_eq(mgmt.as_bytes(), token.as_bytes()) => Ok(Authz::Management),
        Some(_) => Err(ApiError::forbidden("ACL not found")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authz {
    /// Whether reads of anything (services, nodes, checks) are allowed.
    pub fn can_read(self) -> bool {
        self != Authz::Anonymous
    }

    /// `service:write` on `name`, with Consul's denial text.
    pub fn service_write(self, name: &str) -> Result<(), ApiError> {
        self.require("service", "write", name)
    }

    /// `service:read` on `name`, with Consul's denial text.
    pub fn service_read(self, name: &str) -> Result<(), ApiError> {
        self.require("service", "read", name)
    }

    /// `node:write` on `name`, with Consul's denial text.
    pub fn node_write(self, name: &str) -> Result<(), ApiError> {
        self.require("node", "write", name)
    }

    fn require(self, resource: &str, access: &str, name: &str) -> Result<(), ApiError> {
        match self {
            Authz::Anonymous => Err(ApiError::forbidden(format!(
                "Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR}' lacks permission \
                 '{resource}:{access}' on {name:?}"
            ))),
            _ => Ok(()),
        }
    }
}
