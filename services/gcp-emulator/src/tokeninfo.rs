//! `tokeninfo`: what an access token is, in Google's fields (numbers as strings, as Google
//! sends them; `sub` the numeric id of the account, as Google's) plus how the emulator minted
//! it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::errors::{OAuthError, json_response};
use crate::state::{State, now};

/// `GET` or `POST /tokeninfo?access_token=T` (the token may also come in a form body).
pub(crate) async fn tokeninfo(
    AxumState(state): AxumState<Arc<State>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let form = crate::oauth::parse_form(&body);
    let Some(token) = query
        .get("access_token")
        .or_else(|| form.get("access_token"))
    else {
        return OAuthError::invalid_request("Missing required parameter: access_token")
            .into_response();
    };
    let Some(record) = state.lookup_token(token) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_token", "error_description": "Invalid Value"}),
        );
    };
    let mut body = json!({
        "azp": record.client,
        "aud": record.client,
        "scope": record.scopes.join(" "),
        "exp": record.expires_at.to_string(),
        "expires_in": (record.expires_at - now()).to_string(),
        "email": record.email,
        "email_verified": record.email.as_ref().map(|_| "true"),
        "access_type": "online",
        "principal": record.principal,
        "grant": record.grant,
        "subject": record.subject,
        "delegates": record.delegates,
        "access_boundary": record.access_boundary,
        "user_project": record.user_project,
    });
    if let Some(id) = record.unique_id {
        body["sub"] = id.into();
    }
    json_response(StatusCode::OK, body)
}
