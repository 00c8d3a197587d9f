//! `POST /v1/filters`: the module's bytes (`application/wasm`, or any
//! body; WebAssembly text is accepted too) -> `{"id":"sha256:...","exports":[...]}`.

use crate::filter::UploadCode;
use crate::http::{read_body, respond, ApiError, AppState, BodyError, Resp};
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use hyper::StatusCode;
use std::sync::Arc;

fn refused(status: StatusCode, code: &'static str, message: &str) -> Resp {
    ApiError::new(status, message).code(code).into_response()
}

/// Handles an upload (the router's layer checked the credential).
pub async fn upload(State(state): State<Arc<AppState>>, req: Request) -> Resp {
    let cap = state.filters.limits.max_module_bytes;
    let bytes = match read_body(req.into_body(), cap, &state).await {
        Ok(b) => b.to_vec(),
        Err(e @ BodyError::TooLarge(_)) => {
            return refused(
                e.status(),
                UploadCode::ModuleTooLarge.as_str(),
                &format!("the module is over the limit of {cap} bytes"),
            )
        }
        Err(e) => {
            let code = match e {
                BodyError::TimedOut(_) => "REQUEST_TIMEOUT",
                _ => UploadCode::InvalidModule.as_str(),
            };
            return refused(e.status(), code, &e.to_string());
        }
    };
    if bytes.is_empty() {
        return refused(
            StatusCode::BAD_REQUEST,
            UploadCode::InvalidModule.as_str(),
            "the body is empty: send the module's bytes",
        );
    }
    match state.filters.upload(bytes).await {
        Ok(m) => respond(
            StatusCode::OK,
            "application/json",
            serde_json::json!({"id": m.id, "exports": m.exports, "abi": 1}).to_string(),
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}
