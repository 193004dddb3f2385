//! Errors the API answers with: an HTTP status and a JSON body that says
//! what was wrong.

use dbgf::InfoError;
use serde::Serialize;
use vmm_core::Error as VmError;
use vmm_core::saved_state::TeleportError;

/// A request the API refused or could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status code (4xx or 5xx).
    pub status: u16,
    /// A stable machine-readable code (`bad_request`, `not_found`, ...).
    pub code: &'static str,
    /// What was wrong, in words.
    pub message: String,
}

/// The JSON body of an error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed (bad JSON, a missing field, a bad parameter).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }

    /// 404: no such endpoint or no such object.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// 405: the endpoint exists but not with this method.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self::new(
            405,
            "method_not_allowed",
            format!("{method} is not allowed on {path}; allowed: {allowed}"),
        )
    }

    /// 409: the VM's state does not allow the operation.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }

    /// 413: the request body is larger than the API accepts.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "payload_too_large",
            format!("request body larger than {limit} bytes"),
        )
    }

    /// 408: the client took longer than `limit` to send its request.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            408,
            "request_timeout",
            format!("the request did not arrive within {limit:?}"),
        )
    }

    /// 503: the API cannot take the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "service_unavailable", message)
    }

    /// 500: the VM failed to carry out a valid request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_error", message)
    }

    /// The JSON body of the error response.
    pub fn to_json(&self) -> String {
        let body = ErrorBody {
            error: ErrorDetail {
                status: self.status,
                code: self.code,
                message: &self.message,
            },
        };
        // Serializing plain strings and numbers cannot fail; fall back to a
        // fixed body rather than panic if it ever did.
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"status":500,"code":"internal_error","message":"cannot encode error"}}"#
                .to_owned()
        })
    }
}

impl ApiError {
    /// The error with `prefix` (`cannot save to FILE`) before its message,
    /// unless the message says that already.
    pub fn in_context(mut self, prefix: &str) -> Self {
        if !self.message.contains(prefix) {
            self.message = format!("{prefix}: {}", self.message);
        }
        self
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        let message = e.to_string();
        match e {
            VmError::State(_)
            | VmError::Rendezvous(_)
            | VmError::Request(_)
            | VmError::Teleport(
                TeleportError::InProgress
                | TeleportError::NotInProgress
                | TeleportError::HandedOver
                | TeleportError::Cancelled,
            ) => ApiError::conflict(message),
            _ => ApiError::internal(message),
        }
    }
}

impl From<InfoError> for ApiError {
    fn from(e: InfoError) -> Self {
        match e {
            InfoError::UnknownHandler { .. } | InfoError::InvalidName(_) => {
                ApiError::not_found(e.to_string())
            }
            InfoError::BadArgs(_) => ApiError::bad_request(e.to_string()),
            InfoError::Executor { .. } => ApiError::conflict(e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_json_with_status_code_and_message() {
        let e = ApiError::conflict("VM state is SUSPENDED \"x\"");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["status"], 409);
        assert_eq!(v["error"]["code"], "conflict");
        assert_eq!(v["error"]["message"], "VM state is SUSPENDED \"x\"");
    }

    #[test]
    fn info_errors_map_to_statuses() {
        let unknown = InfoError::UnknownHandler {
            name: "nope".into(),
            similar: vec![],
        };
        assert_eq!(ApiError::from(unknown).status, 404);
        assert_eq!(ApiError::from(InfoError::BadArgs("x".into())).status, 400);
        assert_eq!(ApiError::from(InfoError::Failed("x".into())).status, 500);
    }

    #[test]
    fn teleport_errors_map_to_statuses() {
        let status = |e: TeleportError| ApiError::from(VmError::Teleport(e)).status;
        // Asking for what the teleport's state does not allow: a conflict.
        assert_eq!(status(TeleportError::NotInProgress), 409);
        assert_eq!(status(TeleportError::InProgress), 409);
        assert_eq!(status(TeleportError::HandedOver), 409);
        assert_eq!(status(TeleportError::Cancelled), 409);
        // The link failing: the VMM could not carry the request out.
        let stalled = TeleportError::TargetStalled {
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(status(stalled), 500);
    }
}
