//! The probe endpoints both admin APIs serve: `/health/live` (200 while the process serves
//! HTTP; a liveness probe must depend on nothing a restart would not fix) and the readiness
//! answer (200, or 503 with the reasons) that `/health/ready` and `/health` share.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// 200 when there is no reason to keep traffic away, else 503.
pub fn ready_status(not_ready: &[&str]) -> StatusCode {
    if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `/health/live`.
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "alive" }))
}

/// `/health/ready`: `{"ready", "not_ready_reasons"}` with [`ready_status`].
pub fn ready(not_ready: Vec<&'static str>) -> Response {
    let code = ready_status(&not_ready);
    let body = json!({ "ready": not_ready.is_empty(), "not_ready_reasons": not_ready });
    (code, Json(body)).into_response()
}
