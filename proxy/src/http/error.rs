//! The one error type of the HTTP and websocket surface: a status, a
//! message, and where the API documents them a code and a position.
//!
//! As HTTP: `{"error": message}`, with `"code"` and `"position"` when set,
//! and `Retry-After` / `WWW-Authenticate: Bearer` headers when asked for. As
//! a websocket error frame: the same body (see [`ApiError::body`]).

use super::{respond, Resp};
use crate::filter::{UploadCode, UploadError};
use crate::refusal::{Kind, Refusal};
use axum::response::IntoResponse;
use hyper::header::HeaderValue;
use hyper::StatusCode;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// A machine-readable code (`FILTER_NOT_FOUND`, `INVALID_MODULE`, ...).
    pub code: Option<&'static str>,
    /// Where in the client's input the error is (a query's byte offset).
    pub position: Option<usize>,
    /// `Retry-After` seconds.
    retry_after: Option<&'static str>,
    /// `WWW-Authenticate: Bearer` (a 401).
    bearer: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            code: None,
            position: None,
            retry_after: None,
            bearer: false,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            bearer: true,
            ..ApiError::new(StatusCode::UNAUTHORIZED, message)
        }
    }

    /// With a machine-readable code.
    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// With the position in the client's input.
    pub fn at(mut self, position: Option<usize>) -> ApiError {
        self.position = position;
        self
    }

    /// With `Retry-After: seconds`.
    pub fn retry_after(mut self, seconds: &'static str) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON body, also sent as a websocket error frame.
    pub fn body(&self) -> serde_json::Value {
        crate::refusal::error_body(&self.message, self.code, self.position)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Resp {
        let mut r = respond(self.status, "application/json", self.body().to_string());
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static(s));
        }
        if self.bearer {
            r.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<Refusal> for ApiError {
    /// The status that answers each kind of refusal.
    fn from(r: Refusal) -> ApiError {
        let status = match r.kind {
            Kind::Invalid => StatusCode::BAD_REQUEST,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::InUse => StatusCode::CONFLICT,
            Kind::Gone => StatusCode::GONE,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            code: r.code,
            position: r.position,
            ..ApiError::new(status, r.message)
        }
    }
}

impl From<walcast_core::requests::BadRequest> for ApiError {
    /// A request the client must correct: 400.
    fn from(e: walcast_core::requests::BadRequest) -> ApiError {
        ApiError::from(Refusal::from(e))
    }
}

impl From<UploadError> for ApiError {
    /// A module that is too large is 413, a compiler that stopped 503, any
    /// other refusal 422.
    fn from(e: UploadError) -> ApiError {
        let status = match e.code {
            UploadCode::ModuleTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UploadCode::CompileTimeout => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.message).code(e.code.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_code_and_position_only_when_set() {
        assert_eq!(
            ApiError::bad_request("no").body(),
            serde_json::json!({"error": "no"})
        );
        assert_eq!(
            ApiError::bad_request("no").at(Some(3)).code("X").body(),
            serde_json::json!({"error": "no", "position": 3, "code": "X"})
        );
        let r = ApiError::unauthorized("who?").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = ApiError::unavailable("later")
            .retry_after("1")
            .into_response();
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
