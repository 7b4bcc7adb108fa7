//! The server's errors, each an HTTP status and an OpenAI-style error body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Errors of `ramole-server`. Each names the request field, adapter or limit at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A request that cannot be served as sent (400).
    #[error("{}{message}", param.as_ref().map(|p| format!("`{p}`: ")).unwrap_or_default())]
    Invalid {
        /// The field at fault, when one is.
        param: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// No or a wrong bearer token (401).
    #[error("a valid `Authorization: Bearer` API key is required")]
    Unauthorized,
    /// A model or adapter that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// An adapter name already taken (409).
    #[error("{0}")]
    Conflict(String),
    /// A request body over the server's limit, in bytes (413).
    #[error("the request body is over the server's limit of {0} bytes")]
    TooLarge(usize),
    /// More items of a request field than the server takes (413).
    #[error("`{what}`: {count}, over the server's limit of {limit}")]
    TooMany {
        /// The field.
        what: &'static str,
        /// How many the request holds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The queue is full (429, with `Retry-After`).
    #[error("the server is at capacity ({0} requests queued or running): retry later")]
    Overloaded(usize),
    /// The request ran past the server's time limit (408).
    #[error("the request ran past the server's limit of {:.3} s", .0.as_secs_f64())]
    Timeout(std::time::Duration),
    /// The model failed for this request (500), e.g. its adapters made the logits diverge.
    #[error("{0}")]
    Generation(String),
    /// The server is shutting down or its engine stopped (503).
    #[error("the server is shutting down")]
    Unavailable,
    /// Setting the server up failed (bad configuration, address in use).
    #[error("{0}")]
    Setup(String),
}

impl ServerError {
    /// The error's kind, as `/metrics` counts it and the body's `type` says.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::NotFound(_) => "not_found_error",
            Self::Conflict(_) => "conflict_error",
            Self::TooLarge(_) | Self::TooMany { .. } => "request_too_large_error",
            Self::Overloaded(_) => "rate_limit_error",
            Self::Timeout(_) => "timeout_error",
            Self::Generation(_) => "generation_error",
            Self::Unavailable => "unavailable_error",
            Self::Setup(_) => "server_error",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) | Self::TooMany { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Generation(_) | Self::Setup(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The same error with every occurrence of the server folder `dir` in its message written as `label`:
    /// client-facing errors do not show where the server keeps its files.
    pub fn redact(self, dir: &std::path::Path, label: &str) -> Self {
        let dir = dir.to_string_lossy();
        if dir.is_empty() || dir == "/" {
            return self;
        }
        let clean = |s: String| s.replace(dir.as_ref(), label);
        match self {
            Self::Invalid { param, message } => Self::Invalid { param, message: clean(message) },
            Self::NotFound(m) => Self::NotFound(clean(m)),
            Self::Conflict(m) => Self::Conflict(clean(m)),
            Self::Generation(m) => Self::Generation(clean(m)),
            Self::Setup(m) => Self::Setup(clean(m)),
            other => other,
        }
    }

    /// The OpenAI-style body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            Self::Invalid { param, .. } => param.clone(),
            Self::TooMany { what, .. } => Some((*what).to_string()),
            _ => None,
        };
        serde_json::json!({"error": {"message": self.to_string(), "type": self.kind(), "param": param,
                                     "code": self.status().as_u16()}})
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if matches!(self, Self::Overloaded(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
