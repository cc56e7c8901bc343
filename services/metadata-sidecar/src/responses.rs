//! Responses as Google's metadata server sends them: `Metadata-Flavor: Google` and the
//! server's other headers on every answer, `application/text` for scalars and listings,
//! `application/json` for JSON, `text/html` for the identity JWT and for error pages in
//! Google's format.

use std::time::Duration;

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// A response with a body held in memory.
pub(crate) type Reply = Response<String>;

const TEXT: &str = "application/text";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=UTF-8";

/// The metadata server's headers.
fn reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut response = Response::new(body);
    *response.status_mut() = status;
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

/// A scalar or a listing.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    reply(status, TEXT, body.into())
}

/// A JSON document, 200.
pub(crate) fn json(value: &serde_json::Value) -> Reply {
    reply(StatusCode::OK, JSON, value.to_string())
}

/// The identity JWT, 200: not JSON, or Python would try to decode it.
pub(crate) fn jwt(token: &str) -> Reply {
    reply(StatusCode::OK, HTML, token.to_owned())
}

/// A health answer (`/readyz`, `/livez`), plain text.
pub(crate) fn plain(status: StatusCode, body: impl Into<String>) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.into())
}

/// Google's HTML error page: `Error 404 (Not Found)!!1` and `reason`.
pub(crate) fn error_page(status: StatusCode, reason: &str) -> Reply {
    let phrase = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    reply(
        status,
        HTML,
        format!(
            "<!DOCTYPE html>\n<html lang=en>\n<title>Error {code} ({phrase})!!1</title>\n\
             <p><b>{code}.</b> <ins>That's an error.</ins>\n<p>{}\n",
            escape_html(reason)
        ),
    )
}

/// 404 with Google's page.
pub(crate) fn not_found() -> Reply {
    error_page(
        StatusCode::NOT_FOUND,
        "The requested URL was not found on this server.",
    )
}

/// 403 with Google's page and `why`.
pub(crate) fn forbidden(why: &str) -> Reply {
    error_page(
        StatusCode::FORBIDDEN,
        &format!("Your client does not have permission to get URL from this server. {why}"),
    )
}

/// 503 with `Retry-After` (whole seconds, at least 1) and `why`.
pub(crate) fn unavailable(why: &str, retry_after: Duration) -> Reply {
    let mut response = error_page(StatusCode::SERVICE_UNAVAILABLE, why);
    let seconds = broker_client::whole_seconds_ceil(retry_after).max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// 301 to `location` (a directory's path with its `/`), with an empty body.
pub(crate) fn redirect(location: &str) -> Reply {
    let mut response = text(StatusCode::MOVED_PERMANENTLY, "");
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A refusal that also closes the connection (the client's request was not read to its end).
pub(crate) fn closing(mut response: Reply) -> Reply {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped for HTML.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_are_googles() {
        let response = not_found();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.body(),
            "<!DOCTYPE html>\n<html lang=en>\n<title>Error 404 (Not Found)!!1</title>\n\
             <p><b>404.</b> <ins>That's an error.</ins>\n<p>The requested URL was not found on this server.\n"
        );
        assert_eq!(response.headers()["content-type"], HTML);
        assert_eq!(response.headers()["metadata-flavor"], "Google");

        let response = forbidden("Missing Metadata-Flavor:Google header.");
        assert!(response.body().contains(
            "<p>Your client does not have permission to get URL from this server. Missing Metadata-Flavor:Google header.\n"
        ));

        let response = unavailable("<b>down</b> & out", Duration::from_millis(1));
        assert_eq!(response.headers()["retry-after"], "1");
        assert!(
            response
                .body()
                .contains("Error 503 (Service Unavailable)!!1")
        );
        assert!(
            response
                .body()
                .contains("&lt;b&gt;down&lt;/b&gt; &amp; out")
        );
        assert_eq!(
            unavailable("x", Duration::from_millis(2500)).headers()["retry-after"],
            "3"
        );
    }
}
