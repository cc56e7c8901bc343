//! Where Google lives: every URL the backends call, each overridable in configuration, and the
//! host an error names as its `upstream`.

use serde::Deserialize;

use crate::BackendError;

/// Google's OAuth 2.0 token endpoint (JWT-bearer and refresh grants).
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Google's Security Token Service (RFC 8693 token exchange, downscoping).
pub const GOOGLE_STS_URL: &str = "https://sts.googleapis.com/v1/token";
/// The base URL of the IAM Service Account Credentials API.
pub const GOOGLE_IAM_CREDENTIALS_URL: &str = "https://iamcredentials.googleapis.com";
/// The base URL of the GCE metadata server.
pub const GOOGLE_METADATA_URL: &str = "http://metadata.google.internal";

/// The URLs of Google's token endpoints. The defaults are Google's production endpoints; the
/// broker's configuration may override each one (e.g. a regional STS endpoint, a private
/// service connect name, or the emulator in dev and tests).
///
/// Deserializes from a table in which every field is optional:
///
/// ```toml
/// token_url = "https://oauth2.googleapis.com/token"
/// sts_url = "https://us-east1-sts.googleapis.com/v1/token"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoogleEndpoints {
    /// The OAuth 2.0 token endpoint, `POST` target of the JWT-bearer grant.
    pub token_url: String,
    /// The STS token endpoint (full URL, `.../v1/token`).
    pub sts_url: String,
    /// The base URL of IAM Credentials (`/v1/projects/-/serviceAccounts/...` is appended).
    pub iam_credentials_url: String,
    /// The base URL of the metadata server (`/computeMetadata/v1/...` is appended).
    pub metadata_url: String,
}

impl Default for GoogleEndpoints {
    fn default() -> Self {
        Self::google()
    }
}

impl GoogleEndpoints {
    /// Google's production endpoints.
    pub fn google() -> Self {
        Self {
            token_url: GOOGLE_TOKEN_URL.to_owned(),
            sts_url: GOOGLE_STS_URL.to_owned(),
            iam_credentials_url: GOOGLE_IAM_CREDENTIALS_URL.to_owned(),
            metadata_url: GOOGLE_METADATA_URL.to_owned(),
        }
    }

    /// Every endpoint on one emulator (`services/gcp-emulator`) at `base_url`, such as
    /// `http://127.0.0.1:8085`: `/token`, `/v1/token`, and the base itself for IAM Credentials
    /// and the metadata server.
    pub fn emulator(base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        Self {
            token_url: format!("{base}/token"),
            sts_url: format!("{base}/v1/token"),
            iam_credentials_url: base.to_owned(),
            metadata_url: base.to_owned(),
        }
    }

    /// Checks that every endpoint is an absolute `https` URL with a host, or `http` for a
    /// loopback host (an emulator): plain HTTP elsewhere would send signed assertions and
    /// tokens in the clear. The metadata server, which speaks only plain HTTP on its link-local
    /// address, may also be `http://metadata.google.internal` or a link-local IP.
    ///
    /// # Errors
    ///
    /// [`BackendError::InvalidEndpoint`] naming the first bad field.
    pub fn validate(&self) -> Result<(), BackendError> {
        for (field, url) in [
            ("token_url", &self.token_url),
            ("sts_url", &self.sts_url),
            ("iam_credentials_url", &self.iam_credentials_url),
            ("metadata_url", &self.metadata_url),
        ] {
            let invalid = |reason: String| BackendError::InvalidEndpoint {
                field,
                url: url.clone(),
                reason,
            };
            let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid("the scheme must be http or https".to_owned()));
            }
            let Some(host) = parsed.host_str().filter(|h| !h.is_empty()).map(Host::parse) else {
                return Err(invalid("a host is required".to_owned()));
            };
            let plain_http_allowed = if field == "metadata_url" {
                is_loopback(&host) || is_metadata_server(&host)
            } else {
                is_loopback(&host)
            };
            if parsed.scheme() == "http" && !plain_http_allowed {
                return Err(invalid(format!(
                    "http:// would send signed assertions and tokens in the clear; use https://, or http:// only for a loopback host (an emulator){}",
                    if field == "metadata_url" {
                        " or the metadata server (metadata.google.internal, 169.254.169.254)"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }
}

/// Where a URL read from a credential file may use plain `http://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlainHttp {
    /// Only on loopback (an emulator): URLs that receive subject tokens, assertions or bearer
    /// tokens on Google's side.
    Loopback,
    /// On loopback and where instance metadata servers answer: link-local addresses
    /// (`169.254.0.0/16`, `fe80::/10`) and AWS's IPv6 `fd00:ec2::254`.
    LoopbackOrInstanceMetadata,
}

/// Checks a URL read from a credential file: absolute, `http` or `https`, with a host and
/// without a user name or password (such URLs are shown in `Debug` output, errors and logs,
/// so credentials in them would leak: a `url` source takes them in its `headers`), and plain
/// `http` only where `plain` allows it. Returns the parsed URL, or why it is refused (never
/// quoting the URL).
pub(crate) fn check_url(url: &str, plain: PlainHttp) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not hold a user name or password (user:password@host): the URL is shown and logged; send credentials in headers (credential_source.headers) instead"
                .to_owned(),
        );
    }
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()).map(Host::parse) else {
        return Err("a host is required".to_owned());
    };
    let allowed = match plain {
        PlainHttp::Loopback => is_loopback(&host),
        PlainHttp::LoopbackOrInstanceMetadata => is_loopback(&host) || is_instance_metadata(&host),
    };
    if parsed.scheme() == "http" && !allowed {
        return Err(match plain {
            PlainHttp::Loopback => {
                "http:// would send tokens in the clear; use https://, or http:// only for a loopback host (an emulator)"
            }
            PlainHttp::LoopbackOrInstanceMetadata => {
                "http:// would carry credentials in the clear; use https://, or http:// only for a loopback or link-local host (an instance metadata server)"
            }
        }
        .to_owned());
    }
    Ok(parsed)
}

/// Link-local addresses, where cloud instance metadata servers answer (AWS, Azure, GCE), and
/// AWS's IPv6 metadata address `fd00:ec2::254`.
fn is_instance_metadata(host: &Host<'_>) -> bool {
    match host {
        Host::Name(_) => false,
        Host::Ip(std::net::IpAddr::V4(ip)) => ip.is_link_local(),
        Host::Ip(std::net::IpAddr::V6(ip)) => {
            ip.is_unicast_link_local()
                || *ip == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// A URL's host: an IP address or a name.
enum Host<'a> {
    Ip(std::net::IpAddr),
    Name(&'a str),
}

impl<'a> Host<'a> {
    /// Reads the host of a parsed URL (IPv6 addresses come in brackets).
    fn parse(host: &'a str) -> Self {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse()
            .map_or_else(|_| Self::Name(host.trim_end_matches('.')), Self::Ip)
    }
}

/// `localhost`, `127.0.0.0/8` or `::1`. Not `*.localhost`: the resolver may send those
/// anywhere.
fn is_loopback(host: &Host<'_>) -> bool {
    match host {
        Host::Name(name) => name.eq_ignore_ascii_case("localhost"),
        Host::Ip(ip) => ip.is_loopback(),
    }
}

/// The GCE metadata server, which speaks only plain HTTP on its link-local address.
fn is_metadata_server(host: &Host<'_>) -> bool {
    match host {
        Host::Name(name) => name.eq_ignore_ascii_case("metadata.google.internal"),
        Host::Ip(std::net::IpAddr::V4(ip)) => ip.is_link_local(),
        Host::Ip(std::net::IpAddr::V6(ip)) => ip.is_unicast_link_local(),
    }
}

/// The host of `url` as errors and metrics name an upstream: the host, plus `:port` when the URL
/// gives a port other than its scheme's default (`https://oauth2.googleapis.com/token` is
/// `oauth2.googleapis.com`, `http://127.0.0.1:8085/v1/token` is `127.0.0.1:8085`, an IPv6
/// host keeps its brackets). User information in the URL is never part of it. A string that
/// is not an absolute URL with a host gives its text between `://` (if any) and the first `/`,
/// `?` or `#`, without anything up to an `@`.
pub fn upstream_host(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => host_of(&parsed),
        _ => {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host)
                .to_owned()
        }
    }
}

/// [`upstream_host`] of a parsed URL.
pub(crate) fn host_of(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_google_and_each_field_overrides() {
        assert_eq!(GoogleEndpoints::default().token_url, GOOGLE_TOKEN_URL);
        let partial: GoogleEndpoints = serde_json::from_value(
            serde_json::json!({"sts_url": "https://eu-sts.example/v1/token"}),
        )
        .expect("valid");
        assert_eq!(partial.sts_url, "https://eu-sts.example/v1/token");
        assert_eq!(partial.token_url, GOOGLE_TOKEN_URL);
        assert_eq!(partial.metadata_url, GOOGLE_METADATA_URL);
        assert!(
            serde_json::from_value::<GoogleEndpoints>(serde_json::json!({"tokn_url": "x"}))
                .is_err()
        );
        GoogleEndpoints::google().validate().expect("valid");
    }

    #[test]
    fn emulator_puts_everything_on_one_base() {
        let e = GoogleEndpoints::emulator("http://127.0.0.1:8085/");
        assert_eq!(e.token_url, "http://127.0.0.1:8085/token");
        assert_eq!(e.sts_url, "http://127.0.0.1:8085/v1/token");
        assert_eq!(e.iam_credentials_url, "http://127.0.0.1:8085");
        assert_eq!(e.metadata_url, "http://127.0.0.1:8085");
        e.validate().expect("valid");
    }

    #[test]
    fn validation_names_the_field() {
        let mut e = GoogleEndpoints::google();
        e.sts_url = "ftp://sts.example/v1/token".into();
        let error = e.validate().expect_err("bad scheme").to_string();
        assert!(error.contains("sts_url"), "{error}");
        e.sts_url = "not a url".into();
        assert!(e.validate().is_err());
    }

    #[test]
    fn plain_http_only_for_loopback_and_the_metadata_server() {
        for (field, url, ok) in [
            ("token_url", "http://127.0.0.1:8085/token", true),
            ("token_url", "http://127.9.9.9/token", true),
            ("token_url", "http://localhost:8085/token", true),
            ("token_url", "http://[::1]:8085/token", true),
            ("token_url", "http://evil.localhost:8085/token", false),
            ("token_url", "http://oauth2.googleapis.com/token", false),
            ("token_url", "http://10.0.0.7/token", false),
            ("token_url", "http://metadata.google.internal/token", false),
            ("sts_url", "http://sts.example.com/v1/token", false),
            ("iam_credentials_url", "http://169.254.169.254", false),
            ("metadata_url", "http://metadata.google.internal", true),
            ("metadata_url", "http://169.254.169.254", true),
            ("metadata_url", "http://127.0.0.1:8085", true),
            ("metadata_url", "http://metadata.example.com", false),
        ] {
            let mut e = GoogleEndpoints::google();
            match field {
                "token_url" => e.token_url = url.into(),
                "sts_url" => e.sts_url = url.into(),
                "iam_credentials_url" => e.iam_credentials_url = url.into(),
                _ => e.metadata_url = url.into(),
            }
            let result = e.validate();
            assert_eq!(result.is_ok(), ok, "{field} = {url}: {result:?}");
            if let Err(error) = result {
                assert!(error.to_string().contains("in the clear"), "{error}");
            }
        }
    }

    #[test]
    fn credential_file_urls_allow_plain_http_only_where_told() {
        for (url, plain, ok) in [
            (
                "https://sts.googleapis.com/v1/token",
                PlainHttp::Loopback,
                true,
            ),
            ("http://127.0.0.1:8085/v1/token", PlainHttp::Loopback, true),
            (
                "http://169.254.169.254/latest/api/token",
                PlainHttp::Loopback,
                false,
            ),
            (
                "http://169.254.169.254/latest/api/token",
                PlainHttp::LoopbackOrInstanceMetadata,
                true,
            ),
            (
                "http://[fd00:ec2::254]/latest/api/token",
                PlainHttp::LoopbackOrInstanceMetadata,
                true,
            ),
            (
                "http://[fd00:ec2::255]/latest/api/token",
                PlainHttp::LoopbackOrInstanceMetadata,
                false,
            ),
            (
                "http://metadata.example.com/token",
                PlainHttp::LoopbackOrInstanceMetadata,
                false,
            ),
            ("https://10.0.0.7/token", PlainHttp::Loopback, true),
            (
                "https://user:secret@sts.example/token",
                PlainHttp::Loopback,
                false,
            ),
            ("http://user@127.0.0.1/token", PlainHttp::Loopback, false),
            (
                "http://:secret@169.254.169.254/token",
                PlainHttp::LoopbackOrInstanceMetadata,
                false,
            ),
            ("ftp://127.0.0.1/token", PlainHttp::Loopback, false),
            ("/v1/token", PlainHttp::Loopback, false),
        ] {
            assert_eq!(check_url(url, plain).is_ok(), ok, "{url} {plain:?}");
        }
    }

    #[test]
    fn upstream_host_keeps_only_non_default_ports() {
        for (url, host) in [
            (GOOGLE_TOKEN_URL, "oauth2.googleapis.com"),
            (GOOGLE_STS_URL, "sts.googleapis.com"),
            (
                "https://sts.googleapis.com:443/v1/token",
                "sts.googleapis.com",
            ),
            (
                "http://metadata.google.internal:80/",
                "metadata.google.internal",
            ),
            (
                "https://eu-sts.example:8443/v1/token",
                "eu-sts.example:8443",
            ),
            ("http://127.0.0.1:8085/token", "127.0.0.1:8085"),
            ("http://[::1]:8085/token", "[::1]:8085"),
            ("https://user:secret@oauth2.example/token", "oauth2.example"),
            ("HTTPS://OAuth2.Example/token?x=1", "oauth2.example"),
            ("oauth2.example:99/token", "oauth2.example:99"),
            ("weird://user:pw@host:1/x", "host:1"),
        ] {
            assert_eq!(upstream_host(url), host, "{url}");
        }
    }
}
