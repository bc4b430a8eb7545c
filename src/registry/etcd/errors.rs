//! etcd's errors as twinreg reports them: which registry, whether another member or a retry can
//! help, and for a refused credential or permission what to check; never the credentials.

use crate::registry::RegistryError;

use super::KIND;

/// A message for an etcd error: the gRPC status message, never credentials; a refusal of the
/// credentials or of a permission says what to check.
pub(super) fn describe(e: &etcd_client::Error) -> String {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let hint = match s.code() {
                Code::Unauthenticated => AUTH_HINT,
                Code::InvalidArgument if s.message().contains("authentication failed") => AUTH_HINT,
                Code::PermissionDenied => PERMISSION_HINT,
                _ => "",
            };
            format!("etcd: {} ({:?}){hint}", s.message(), s.code())
        }
        other => format!("etcd: {other}"),
    }
}

const AUTH_HINT: &str = "; check etcd.username and etcd.password (TWINREG_ETCD__PASSWORD)";
const PERMISSION_HINT: &str = "; the etcd user's role must grant readwrite on the key prefix \
                               etcd.prefix + '/' (see docs/credentials.md)";

pub(super) fn to_err(e: etcd_client::Error) -> RegistryError {
    use tonic::Code;
    let msg = describe(&e);
    match &e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::InvalidArgument
                    | Code::FailedPrecondition
            ) =>
        {
            RegistryError::rejected(KIND, msg)
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            RegistryError::unreachable(KIND, msg)
        }
        etcd_client::Error::GRpcStatus(s) if s.code() == Code::Unavailable => {
            RegistryError::unreachable(KIND, msg)
        }
        _ => RegistryError::unavailable(KIND, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_check() {
        let status = |s: tonic::Status| describe(&etcd_client::Error::GRpcStatus(s));
        let wrong = status(tonic::Status::invalid_argument(
            "etcdserver: authentication failed, invalid user ID or password",
        ));
        assert!(
            wrong.contains("check etcd.username and etcd.password"),
            "{wrong}"
        );
        let expired = status(tonic::Status::unauthenticated(
            "etcdserver: invalid auth token",
        ));
        assert!(expired.contains("check etcd.username"), "{expired}");
        let denied = status(tonic::Status::permission_denied(
            "etcdserver: permission denied",
        ));
        assert!(denied.contains("readwrite on the key prefix"), "{denied}");
        let other = status(tonic::Status::invalid_argument(
            "etcdserver: too many operations",
        ));
        assert!(!other.contains("check"), "{other}");
    }
}
