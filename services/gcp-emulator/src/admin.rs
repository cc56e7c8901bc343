//! The admin API under `/_emulator/`: faults, counters, the request log, token lifetime, key
//! rotation, the federation description.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::errors::json_response;
use crate::faults::{Endpoint, Fault};
use crate::state::State;

/// The longest token lifetime the override accepts (12 h, Google's longest).
const MAX_LIFETIME_OVERRIDE_SECS: u64 = 43_200;

fn bad_request(message: String) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({"error": message}))
}

/// `POST /_emulator/faults`.
pub(crate) async fn add_fault(
    AxumState(state): AxumState<Arc<State>>,
    body: axum::body::Bytes,
) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(fault) => fault,
        Err(e) => return bad_request(format!("invalid fault: {e}")),
    };
    match state.faults.inject(fault) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => bad_request(e.to_string()),
    }
}

/// `DELETE /_emulator/faults`.
pub(crate) async fn clear_faults(AxumState(state): AxumState<Arc<State>>) -> StatusCode {
    state.faults.clear();
    StatusCode::NO_CONTENT
}

/// `GET /_emulator/counters`.
pub(crate) async fn counters(AxumState(state): AxumState<Arc<State>>) -> Response {
    json_response(StatusCode::OK, json!(state.faults.counters()))
}

/// `DELETE /_emulator/counters`.
pub(crate) async fn reset_counters(AxumState(state): AxumState<Arc<State>>) -> StatusCode {
    state.faults.reset_counters();
    StatusCode::NO_CONTENT
}

/// The body of `PUT /_emulator/token-lifetime`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LifetimeOverride {
    seconds: u64,
}

/// `PUT /_emulator/token-lifetime`.
pub(crate) async fn set_token_lifetime(
    AxumState(state): AxumState<Arc<State>>,
    Json(body): Json<LifetimeOverride>,
) -> Response {
    if !(1..=MAX_LIFETIME_OVERRIDE_SECS).contains(&body.seconds) {
        return bad_request(format!(
            "seconds must be within 1 and {MAX_LIFETIME_OVERRIDE_SECS}"
        ));
    }
    state.set_lifetime_override(Some(body.seconds));
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /_emulator/token-lifetime`.
pub(crate) async fn clear_token_lifetime(AxumState(state): AxumState<Arc<State>>) -> StatusCode {
    state.set_lifetime_override(None);
    StatusCode::NO_CONTENT
}

/// `POST /_emulator/rotate-signing-key`.
pub(crate) async fn rotate_signing_key(AxumState(state): AxumState<Arc<State>>) -> Response {
    match crate::keys::SigningKey::generate("gcp-emulator id-token signer") {
        Ok(key) => {
            let kid = key.kid().to_owned();
            state.rotate_id_token_key(key);
            json_response(StatusCode::OK, json!({ "kid": kid }))
        }
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": e.to_string()}),
        ),
    }
}

/// The query of `/_emulator/requests`.
#[derive(Debug, Deserialize)]
pub(crate) struct RequestsQuery {
    endpoint: Option<String>,
}

/// The endpoint the query names (`None`: every endpoint); an unknown name is the message of
/// a 400 answer.
fn endpoint_of(query: &RequestsQuery) -> Result<Option<Endpoint>, String> {
    match query.endpoint.as_deref().filter(|e| !e.is_empty()) {
        None => Ok(None),
        Some(name) => Endpoint::from_name(name).map(Some).ok_or_else(|| {
            format!(
                "unknown endpoint {name:?}: one of {}",
                Endpoint::ALL.map(Endpoint::name).join(", ")
            )
        }),
    }
}

/// `GET /_emulator/requests[?endpoint=E]`: the last requests of an endpoint (or of all),
/// oldest first, normalized.
pub(crate) async fn requests(
    AxumState(state): AxumState<Arc<State>>,
    axum::extract::Query(query): axum::extract::Query<RequestsQuery>,
) -> Response {
    let requests = match endpoint_of(&query) {
        Ok(Some(endpoint)) => state.requests.requests(endpoint),
        Ok(None) => state.requests.all(),
        Err(message) => return bad_request(message),
    };
    json_response(StatusCode::OK, json!(requests))
}

/// `DELETE /_emulator/requests[?endpoint=E]`.
pub(crate) async fn clear_requests(
    AxumState(state): AxumState<Arc<State>>,
    axum::extract::Query(query): axum::extract::Query<RequestsQuery>,
) -> Response {
    match endpoint_of(&query) {
        Ok(endpoint) => {
            state.requests.clear(endpoint);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => bad_request(message),
    }
}

/// `GET /_emulator/federation`: [`crate::Federation`] as JSON (what
/// `DIR/federation/federation.json` holds, secrets included).
pub(crate) async fn federation(AxumState(state): AxumState<Arc<State>>) -> Response {
    json_response(
        StatusCode::OK,
        crate::Federation::describe(&state, state.data_dir.as_deref()).to_json(),
    )
}
