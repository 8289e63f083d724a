//! `GET /admin/v1/compliance` (to be written).

use axum::extract::State;
use axum::http::StatusCode;

use crate::api::AdminApi;

pub async fn handler(State(_api): State<AdminApi>) -> StatusCode {
    StatusCode::NOT_IMPLEMENTED
}
