//! Why a registry operation failed: which registry, what kind of failure, and whether a retry (or
//! another member of the same registry) can help. The coordinator's retry, breaker and repair
//! decisions read these; `api::error` maps them for clients.

use std::fmt;

use super::RegistryKind;

/// Why a registry operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryErrorKind {
    /// Could not reach it, or it is not connected yet: a retry later can help.
    Unavailable,
    /// It did not answer within the deadline: a retry later can help.
    Timeout,
    /// Not tried: its circuit breaker is open after repeated failures.
    CircuitOpen,
    /// It answered and refused (bad credentials, a permission, a value it will not store): a retry
    /// with the same input will not help until an operator acts.
    Rejected,
}

#[derive(Debug, Clone, thiserror::Error)]
pub struct RegistryError {
    pub registry: RegistryKind,
    pub kind: RegistryErrorKind,
    pub message: String,
    /// The request could not reach the registry (connection refused or reset, member down):
    /// another member of the same registry may do.
    pub unreachable: bool,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl RegistryError {
    pub fn unavailable(registry: RegistryKind, message: impl Into<String>) -> Self {
        Self {
            registry,
            kind: RegistryErrorKind::Unavailable,
            message: message.into(),
            unreachable: false,
        }
    }

    pub fn circuit_open(registry: RegistryKind, message: impl Into<String>) -> Self {
        Self {
            kind: RegistryErrorKind::CircuitOpen,
            ..Self::unavailable(registry, message)
        }
    }

    pub fn unreachable(registry: RegistryKind, message: impl Into<String>) -> Self {
        Self {
            unreachable: true,
            ..Self::unavailable(registry, message)
        }
    }

    pub fn rejected(registry: RegistryKind, message: impl Into<String>) -> Self {
        Self {
            registry,
            kind: RegistryErrorKind::Rejected,
            message: message.into(),
            unreachable: false,
        }
    }

    pub fn timeout(registry: RegistryKind, after: std::time::Duration) -> Self {
        Self {
            registry,
            kind: RegistryErrorKind::Timeout,
            message: format!("timed out after {} ms", after.as_millis()),
            unreachable: false,
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind != RegistryErrorKind::Rejected
    }
}
