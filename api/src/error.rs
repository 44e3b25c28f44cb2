//! The one error type of the HTTP API. Every failure a client can see is one
//! of these, rendered as `{"error": {"code": "...", "message": "..."}}` with
//! the right status. Internal details (Redis errors, peer addresses' errors)
//! are logged, not sent, except the node ids a 503 must name.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shared::core::request::RequestError;
use shared::node::{CoordError, Shadowed, Unavailable};
use tracing::error;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed; nothing was changed.
    BadRequest { code: &'static str, message: String },
    /// 401: credentials missing.
    Unauthorized(&'static str),
    /// 403: credentials wrong.
    Forbidden(&'static str),
    /// 404: no such route.
    NoRoute(String),
    /// 405.
    MethodNotAllowed,
    /// 408: the body did not arrive in time.
    RequestTimeout { timeout_ms: u64 },
    /// 413: body over the limit.
    PayloadTooLarge { limit_bytes: usize },
    /// 415: body is not JSON.
    UnsupportedMediaType(String),
    /// 503 `consistency_unreachable`: the consistency level could not be
    /// reached (the node's own details, boxed: the other variants are
    /// small, and every handler returns this type).
    Unavailable(Box<Unavailable>),
    /// 503: this node's clock is beyond the drift bound from its peers'.
    ClockSkew { offset_ms: i64, drift_max_ms: u64 },
    /// 503 `write_shadowed`: a newer version on a replica shadows the write.
    Shadowed(Box<Shadowed>),
    /// 503 `min_version_unavailable`: no replica or hint held the version
    /// a read asked for within the wait.
    MinVersion {
        min: String,
        newest: Option<String>,
        waited_ms: u64,
    },
    /// 412 `precondition_failed`: a conditional write's condition did not hold.
    PreconditionFailed {
        current: Option<String>,
        deleted: bool,
    },
    /// 503: too many requests in flight.
    Overloaded,
    /// 503: this node's own storage does not answer.
    StorageUnavailable,
    /// 503 with its own code: a service of this node that is off or full
    /// (`watch_disabled`, `too_many_watchers`).
    ServiceUnavailable { code: &'static str, message: String },
    /// 409 with its own code: the request conflicts with the cluster's
    /// state (a membership change in progress, another epoch).
    Conflict { code: &'static str, message: String },
    /// 503 `not_a_member`: this node is not (yet) part of the cluster.
    NotAMember,
    /// 500: a bug; details are in the log.
    Internal,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, String, Value) {
        match self {
            ApiError::Conflict { code, message } => {
                (StatusCode::CONFLICT, code, message.clone(), Value::Null)
            }
            ApiError::NotAMember => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_a_member",
                "this node is not a member of the cluster (yet): add it with POST /cluster/members, or ask a member"
                    .to_owned(),
                Value::Null,
            ),
            ApiError::BadRequest { code, message } => {
                (StatusCode::BAD_REQUEST, code, message.clone(), Value::Null)
            }
            ApiError::Unauthorized(m) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                (*m).to_owned(),
                Value::Null,
            ),
            ApiError::Forbidden(m) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                (*m).to_owned(),
                Value::Null,
            ),
            ApiError::NoRoute(path) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {path}"),
                Value::Null,
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method".to_owned(),
                Value::Null,
            ),
            ApiError::RequestTimeout { timeout_ms } => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("request body did not arrive within {timeout_ms} ms"),
                Value::Null,
            ),
            ApiError::PayloadTooLarge { limit_bytes } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is over the limit of {limit_bytes} bytes"),
                json!({ "limit_bytes": limit_bytes }),
            ),
            ApiError::UnsupportedMediaType(got) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("body must be JSON (Content-Type: application/json), got {got:?}"),
                Value::Null,
            ),
            ApiError::Unavailable(details) => {
                let Unavailable {
                    operation,
                    consistency,
                    required,
                    replicas,
                    answered,
                    failed,
                    stored_on,
                    queued_for,
                    hinted_for,
                } = details.as_ref();
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "consistency_unreachable",
                    format!(
                        "{operation} at consistency {consistency} needs {required} of {} replicas; {} answered: [{}]",
                        replicas.len(),
                        answered.len(),
                        answered.join(", ")
                    ),
                    {
                        let mut details = json!({
                            "consistency": consistency,
                            "required": required,
                            "replicas": replicas,
                            "answered": answered,
                            "failed": failed,
                        });
                        if *operation == "write"
                            && let Some(obj) = details.as_object_mut()
                        {
                            // No rollback: the value may still appear.
                            obj.insert("stored_on".into(), json!(stored_on));
                            obj.insert("queued_for".into(), json!(queued_for));
                            obj.insert("hinted_for".into(), json!(hinted_for));
                        }
                        details
                    },
                )
            }
            ApiError::MinVersion {
                min,
                newest,
                waited_ms,
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "min_version_unavailable",
                format!(
                    "no replica or hint holds version {min} or newer after {waited_ms} ms; the write may still be on its way: retry"
                ),
                json!({ "min_version": min, "newest": newest, "waited_ms": waited_ms }),
            ),
            ApiError::PreconditionFailed { current, deleted } => (
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                match current {
                    Some(v) if *deleted => format!("the key was deleted at version {v}"),
                    Some(v) => format!("the key's current version is {v}"),
                    None => "the key holds no value".to_owned(),
                },
                json!({ "current_version": current, "deleted": deleted }),
            ),
            ApiError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many requests in flight; retry shortly".to_owned(),
                Value::Null,
            ),
            ApiError::ClockSkew {
                offset_ms,
                drift_max_ms,
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "clock_skew",
                format!(
                    "this node's clock is {offset_ms} ms from its peers' (bound {drift_max_ms} ms): it does not coordinate writes; write through another node"
                ),
                json!({ "offset_ms": offset_ms, "drift_max_ms": drift_max_ms }),
            ),
            ApiError::Shadowed(details) => {
                let Shadowed {
                    version,
                    holder,
                    stored_on,
                } = details.as_ref();
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "write_shadowed",
                    format!(
                        "version {version} is below a newer version on {holder} after every re-stamp; retry"
                    ),
                    json!({ "version": version, "holder": holder, "stored_on": stored_on }),
                )
            }
            ApiError::StorageUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "this node's storage does not answer; try another node".to_owned(),
                Value::Null,
            ),
            ApiError::ServiceUnavailable { code, message } => (
                StatusCode::SERVICE_UNAVAILABLE,
                *code,
                message.clone(),
                Value::Null,
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the node's log".to_owned(),
                Value::Null,
            ),
        }
    }

    /// The status and the `{"code": ..., "message": ...}` object (with any
    /// details) of the answer.
    pub(crate) fn status_and_body(&self) -> (StatusCode, Value) {
        let (status, code, message, details) = self.parts();
        let mut body = json!({ "code": code, "message": message });
        if let (Value::Object(extra), Some(obj)) = (details, body.as_object_mut()) {
            obj.extend(extra);
        }
        (status, body)
    }

    /// The `{"code": ..., "message": ...}` object alone, for an answer that
    /// reports an error inside a larger body (`/health` when degraded).
    pub fn body(&self) -> Value {
        self.status_and_body().1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        (status, Json(json!({ "error": body }))).into_response()
    }
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::Unavailable(details) => ApiError::Unavailable(details),
            CoordError::ClockSkew {
                offset_ms,
                drift_max_ms,
            } => ApiError::ClockSkew {
                offset_ms,
                drift_max_ms,
            },
            CoordError::Shadowed(details) => ApiError::Shadowed(details),
            CoordError::Storage(source) => {
                error!(error = %source, "local storage failed");
                ApiError::StorageUnavailable
            }
            CoordError::PreconditionFailed { current, deleted } => {
                ApiError::PreconditionFailed { current, deleted }
            }
            CoordError::MinVersion {
                min,
                newest,
                waited_ms,
            } => ApiError::MinVersion {
                min,
                newest,
                waited_ms,
            },
            e @ CoordError::FutureMinVersion { .. } => {
                ApiError::bad_request("future_min_version", e.to_string())
            }
            CoordError::UnknownNode(node) => {
                ApiError::bad_request("unknown_node", format!("unknown node {node:?}"))
            }
            CoordError::Membership(e) => {
                use shared::core::topology::ChangeError;
                let code = match e {
                    ChangeError::InProgress { .. } => "change_in_progress",
                    ChangeError::AlreadyMember(_) => "already_member",
                    ChangeError::NotMember(_) => "not_a_member",
                    ChangeError::UrlTaken { .. } => "url_taken",
                    ChangeError::LastMember => "last_member",
                    ChangeError::TooMany => "too_many_nodes",
                    ChangeError::NothingToResume => "nothing_to_resume",
                };
                ApiError::Conflict {
                    code,
                    message: e.to_string(),
                }
            }
            e @ CoordError::EpochMismatch { .. } => ApiError::Conflict {
                code: "epoch_mismatch",
                message: e.to_string(),
            },
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::bad_request(e.code(), e.to_string())
    }
}

impl From<shared::core::listing::ListError> for ApiError {
    fn from(e: shared::core::listing::ListError) -> Self {
        use shared::core::listing::ListError;
        let code = match e {
            ListError::BadLimit { .. } => "bad_limit",
            ListError::BadCursor => "bad_cursor",
            ListError::BadBound { .. } => "bad_key",
            ListError::BadFlag => "bad_query",
        };
        ApiError::bad_request(code, e.to_string())
    }
}

impl From<shared::storage::StoreError> for ApiError {
    fn from(e: shared::storage::StoreError) -> Self {
        ApiError::from(CoordError::Storage(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::core::quorum::Consistency;
    use shared::node::{HintPlacement, NodeFailure};

    fn body_of(e: CoordError) -> (StatusCode, Value) {
        ApiError::from(e).status_and_body()
    }

    /// The 503 bodies, field by field: the node's error details are
    /// rendered as they are, and only a write names where its value went.
    #[test]
    fn unavailable_and_shadowed_bodies() {
        let unavailable = |operation| Unavailable {
            operation,
            consistency: Consistency::All,
            required: 3,
            replicas: vec!["n1".into(), "n2".into(), "n3".into()],
            answered: vec!["n1".into()],
            failed: vec![NodeFailure {
                node: "n2".into(),
                code: "timeout",
                error: "the replica did not answer in time",
            }],
            stored_on: vec!["n1".into()],
            queued_for: vec!["n3".into()],
            hinted_for: vec![HintPlacement {
                owner: "n2".into(),
                holder: "n1".into(),
            }],
        };
        let (status, body) = body_of(CoordError::Unavailable(Box::new(unavailable("write"))));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({
                "code": "consistency_unreachable",
                "message": "write at consistency all needs 3 of 3 replicas; 1 answered: [n1]",
                "consistency": "all",
                "required": 3,
                "replicas": ["n1", "n2", "n3"],
                "answered": ["n1"],
                "failed": [{"node": "n2", "code": "timeout", "error": "the replica did not answer in time"}],
                "stored_on": ["n1"],
                "queued_for": ["n3"],
                "hinted_for": [{"owner": "n2", "holder": "n1"}],
            })
        );
        let (_, body) = body_of(CoordError::Unavailable(Box::new(unavailable("read"))));
        let fields: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            [
                "answered",
                "code",
                "consistency",
                "failed",
                "message",
                "replicas",
                "required"
            ]
        );
        let (status, body) = body_of(CoordError::Shadowed(Box::new(Shadowed {
            version: "5:0:n1".into(),
            holder: "n2".into(),
            stored_on: vec!["n1".into()],
        })));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({
                "code": "write_shadowed",
                "message": "version 5:0:n1 is below a newer version on n2 after every re-stamp; retry",
                "version": "5:0:n1",
                "holder": "n2",
                "stored_on": ["n1"],
            })
        );
    }
}
