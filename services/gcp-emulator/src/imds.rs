//! The AWS EC2 instance metadata service, IMDSv2 only (`169.254.169.254/latest/...`): what
//! AWS-sourced workload identity federation reads for its region and credentials
//! (google-protocols.md §6.1).
//!
//! `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1 to 21600) answers a
//! session token; every `GET /latest/meta-data/...` must carry it as
//! `X-aws-ec2-metadata-token`, else 401 (the instance requires IMDSv2, `HttpTokens=required`).

use std::sync::Arc;

use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::{State, now};

/// How long the instance role's credentials are said to live (AWS rotates them hourly and
/// makes them valid for about six hours).
const CREDENTIAL_LIFETIME_SECS: i64 = 6 * 3600;
/// The longest session IMDSv2 grants.
const MAX_SESSION_TTL_SECS: i64 = 21_600;
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

fn with_headers(mut response: Response, content_type: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("EC2ws"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(body: String) -> Response {
    with_headers((StatusCode::OK, body).into_response(), "text/plain")
}

/// An IMDS error: the XHTML page the real service answers, `<title>401 - Unauthorized</title>`.
pub(crate) fn error(status: StatusCode) -> Response {
    let title = format!(
        "{} - {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
         \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
         <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    );
    with_headers((status, body).into_response(), "text/html")
}

/// Every path under `/latest/`.
pub(crate) async fn serve(
    AxumState(state): AxumState<Arc<State>>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(instance) = &state.world.aws_instance else {
        return error(StatusCode::NOT_FOUND);
    };
    if path == "api/token" {
        if method != Method::PUT {
            return error(StatusCode::METHOD_NOT_ALLOWED);
        }
        // IMDSv2 refuses session requests that went through a proxy.
        if headers.contains_key("x-forwarded-for") {
            return error(StatusCode::FORBIDDEN);
        }
        let ttl = headers
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|ttl| (1..=MAX_SESSION_TTL_SECS).contains(ttl));
        let Some(ttl) = ttl else {
            return error(StatusCode::BAD_REQUEST);
        };
        let mut response = text(state.mint_imds_session(ttl));
        response
            .headers_mut()
            .insert(TTL_HEADER, HeaderValue::from(ttl));
        return response;
    }
    if method != Method::GET && method != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED);
    }
    let session = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if !session.is_some_and(|token| state.valid_imds_session(token)) {
        return error(StatusCode::UNAUTHORIZED);
    }
    let Some(credential) = state
        .world
        .aws_credentials
        .iter()
        .find(|c| c.access_key_id == instance.access_key_id)
    else {
        return error(StatusCode::NOT_FOUND);
    };
    let role = credential.role_name().unwrap_or_default();
    let Some(meta) = path
        .strip_prefix("meta-data")
        .map(|rest| rest.trim_start_matches('/'))
    else {
        return error(StatusCode::NOT_FOUND);
    };
    match meta {
        "" => text("iam/\ninstance-id\nplacement/".to_owned()),
        "instance-id" => text(instance.instance_id.clone()),
        "placement" | "placement/" => text("availability-zone\nregion".to_owned()),
        "placement/availability-zone" => text(instance.availability_zone.clone()),
        "placement/region" => text(instance.region().to_owned()),
        "iam" | "iam/" => text("info\nsecurity-credentials/".to_owned()),
        "iam/info" => {
            let now = now();
            text(
                serde_json::to_string_pretty(&json!({
                    "Code": "Success",
                    "LastUpdated": crate::iam::format_expire_time(now),
                    "InstanceProfileArn": format!(
                        "arn:aws:iam::{}:instance-profile/{role}",
                        credential.account_id()
                    ),
                    "InstanceProfileId": "AIPAEMULATOR00000001",
                }))
                .unwrap_or_default(),
            )
        }
        "iam/security-credentials" | "iam/security-credentials/" => text(role.to_owned()),
        _ => match meta.strip_prefix("iam/security-credentials/") {
            Some(name) if name.trim_end_matches('/') == role => {
                let now = now();
                let mut body = json!({
                    "Code": "Success",
                    "LastUpdated": crate::iam::format_expire_time(now),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": credential.access_key_id,
                    "SecretAccessKey": credential.secret_access_key,
                    "Expiration": crate::iam::format_expire_time(now + CREDENTIAL_LIFETIME_SECS),
                });
                if let Some(token) = &credential.session_token {
                    body["Token"] = token.expose().into();
                }
                text(serde_json::to_string_pretty(&body).unwrap_or_default())
            }
            _ => error(StatusCode::NOT_FOUND),
        },
    }
}
