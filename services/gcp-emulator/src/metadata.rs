//! The GCE metadata server (`metadata.google.internal/computeMetadata/v1`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::{Grant, State, TokenRecord, now};
use crate::world::ServiceAccount;

/// What Google's metadata server answers as `expires_in` for a fresh token.
const TOKEN_LIFETIME_SECS: i64 = 3599;

fn with_metadata_headers(mut response: Response, content_type: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert("metadata-flavor", HeaderValue::from_static("Google"));
    headers.insert(
        header::SERVER,
        HeaderValue::from_static("Metadata Server for VM"),
    );
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-xss-protection", HeaderValue::from_static("0"));
    headers.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
    response
}

/// A text response as the metadata server sends scalars and listings.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    with_metadata_headers((status, body.into()).into_response(), "application/text")
}

fn json_body(body: serde_json::Value) -> Response {
    with_metadata_headers(
        (StatusCode::OK, body.to_string()).into_response(),
        "application/json",
    )
}

fn html(status: StatusCode, body: String) -> Response {
    with_metadata_headers((status, body).into_response(), "text/html; charset=UTF-8")
}

fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "<!DOCTYPE html>\n<html lang=en>\n<title>Error 404 (Not Found)!!1</title>\n\
         <p><b>404.</b> <ins>That's an error.</ins>\n<p>The requested URL was not found on this server.\n"
            .to_owned(),
    )
}

fn forbidden(reason: &str) -> Response {
    html(
        StatusCode::FORBIDDEN,
        format!(
            "<!DOCTYPE html>\n<html lang=en>\n<title>Error 403 (Forbidden)!!1</title>\n\
             <p><b>403.</b> <ins>That's an error.</ins>\n<p>{reason}\n"
        ),
    )
}

/// `GET /`: the detection ping.
pub(crate) async fn ping() -> Response {
    text(StatusCode::OK, "computeMetadata/\n")
}

/// `GET /computeMetadata/{*path}`.
pub(crate) async fn serve(
    AxumState(state): AxumState<Arc<State>>,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if headers.contains_key("x-forwarded-for") {
        return forbidden(
            "Your client does not have permission to get URL from this server. \
            Requests with an X-Forwarded-For header are refused.",
        );
    }
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return forbidden(
            "Your client does not have permission to get URL from this server. \
            Missing Metadata-Flavor:Google header.",
        );
    }
    let recursive = query
        .get("recursive")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let alt_json = query.get("alt").is_some_and(|v| v == "json");
    let Some(path) = path
        .strip_prefix("v1/")
        .or_else(|| (path == "v1").then_some(""))
    else {
        return not_found();
    };
    let world = &state.world;
    let project = world
        .service_account(&world.metadata.service_account)
        .map(ServiceAccount::project_id)
        .unwrap_or_default();
    let project_number = world
        .project(project)
        .map(|p| p.number.clone())
        .unwrap_or_default();
    let instance = &world.metadata;
    let scalar = |value: String| {
        if alt_json {
            json_body(serde_json::Value::String(value))
        } else {
            text(StatusCode::OK, value)
        }
    };
    match path {
        "" => text(StatusCode::OK, "instance/\nproject/\nuniverse/\n"),
        "project" | "instance" | "universe" | "instance/service-accounts" => {
            redirect_to_directory(path)
        }
        "project/" => text(StatusCode::OK, "numeric-project-id\nproject-id\n"),
        "project/project-id" => scalar(project.to_owned()),
        "project/numeric-project-id" => scalar(project_number.clone()),
        "instance/" => text(
            StatusCode::OK,
            "hostname\nid\nname\nservice-accounts/\nzone\n",
        ),
        "instance/id" => scalar(instance.instance_id.clone()),
        "instance/name" => scalar(instance.instance_name.clone()),
        "instance/hostname" => scalar(format!(
            "{}.{}.c.{project}.internal",
            instance.instance_name, instance.zone
        )),
        "instance/zone" => scalar(format!("projects/{project_number}/zones/{}", instance.zone)),
        "universe/" => text(StatusCode::OK, "universe-domain\n"),
        "universe/universe-domain" | "universe/universe_domain" => {
            scalar("googleapis.com".to_owned())
        }
        "instance/service-accounts/" => {
            if recursive {
                let mut map = serde_json::Map::new();
                map.insert("default".to_owned(), account_json(&state));
                map.insert(instance.service_account.clone(), account_json(&state));
                json_body(map.into())
            } else {
                text(
                    StatusCode::OK,
                    format!("default/\n{}/\n", instance.service_account),
                )
            }
        }
        _ => match path
            .strip_prefix("instance/service-accounts/")
            .and_then(|rest| rest.split_once('/'))
        {
            Some((account, leaf))
                if account == "default" || account == instance.service_account =>
            {
                account_leaf(&state, leaf, recursive, &query)
            }
            None if path.starts_with("instance/service-accounts/") => {
                let account = &path["instance/service-accounts/".len()..];
                if account == "default" || account == instance.service_account {
                    redirect_to_directory(path)
                } else {
                    not_found()
                }
            }
            _ => not_found(),
        },
    }
}

fn redirect_to_directory(path: &str) -> Response {
    let mut response = text(StatusCode::MOVED_PERMANENTLY, "");
    if let Ok(location) = HeaderValue::from_str(&format!("/computeMetadata/v1/{path}/")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn account_json(state: &State) -> serde_json::Value {
    json!({
        "aliases": ["default"],
        "email": state.world.metadata.service_account,
        "scopes": state.world.metadata.scopes,
    })
}

fn account_leaf(
    state: &State,
    leaf: &str,
    recursive: bool,
    query: &HashMap<String, String>,
) -> Response {
    let instance = &state.world.metadata;
    match leaf {
        "" if recursive => json_body(account_json(state)),
        "" => text(StatusCode::OK, "aliases\nemail\nidentity\nscopes\ntoken\n"),
        "email" => text(StatusCode::OK, instance.service_account.clone()),
        "aliases" => text(StatusCode::OK, "default"),
        "scopes" => text(
            StatusCode::OK,
            instance
                .scopes
                .iter()
                .map(|s| format!("{s}\n"))
                .collect::<String>(),
        ),
        "token" => token(state, query),
        "identity" => identity(state, query),
        _ => not_found(),
    }
}

fn token(state: &State, query: &HashMap<String, String>) -> Response {
    let instance = &state.world.metadata;
    let requested: Vec<String> = query
        .get("scopes")
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Some(bad) = requested.iter().find(|s| !crate::oauth::valid_scope(s)) {
        return text(StatusCode::BAD_REQUEST, format!("invalid scope: {bad}\n"));
    }
    let scopes = if requested.is_empty() {
        instance.scopes.clone()
    } else {
        requested
    };
    let Some(account) = state.world.service_account(&instance.service_account) else {
        return not_found();
    };
    let lifetime = state.lifetime(TOKEN_LIFETIME_SECS);
    let access_token = state.mint_access_token(
        "ya29.c.",
        TokenRecord {
            principal: format!("serviceAccount:{}", account.email),
            email: Some(account.email.clone()),
            unique_id: Some(account.unique_id()),
            client: account.unique_id(),
            scopes,
            expires_at: now() + lifetime,
            grant: Grant::Metadata,
            subject: None,
            delegates: Vec::new(),
            access_boundary: None,
            user_project: None,
        },
    );
    json_body(json!({"access_token": access_token, "expires_in": lifetime, "token_type": "Bearer"}))
}

fn identity(state: &State, query: &HashMap<String, String>) -> Response {
    let Some(audience) = query.get("audience").filter(|a| !a.is_empty()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "non-empty audience parameter required\n",
        );
    };
    let full = match query.get("format").map(String::as_str) {
        None | Some("standard") => false,
        Some("full") => true,
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("invalid format: {other}\n"),
            );
        }
    };
    let licenses = query
        .get("licenses")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let world = &state.world;
    let Some(account) = world.service_account(&world.metadata.service_account) else {
        return not_found();
    };
    let extra = full.then(|| {
        let project = world.project(account.project_id());
        let mut compute = json!({
            "project_id": account.project_id(),
            "project_number": project.and_then(|p| p.number.parse::<i64>().ok()).unwrap_or_default(),
            "zone": world.metadata.zone,
            "instance_id": world.metadata.instance_id,
            "instance_name": world.metadata.instance_name,
            "instance_creation_timestamp": 1_700_000_000,
        });
        if licenses {
            compute["license_id"] = json!([]);
        }
        ("google", json!({ "compute_engine": compute }))
    });
    match state.sign_service_account_id_token(account, audience, true, extra) {
        Ok((token, _)) => html(StatusCode::OK, token),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
