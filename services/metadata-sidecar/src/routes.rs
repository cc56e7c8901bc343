//! The GCE metadata protocol (`google-protocols.md` §3): which path answers what.
//!
//! | path | answer |
//! |---|---|
//! | `/` | 200 `computeMetadata/` (the detection ping; no header needed) |
//! | `/readyz`, `/livez` | readiness (a valid token for the default account) and liveness |
//! | `/computeMetadata/v1/` | listing; `?recursive=true`: the whole tree as JSON |
//! | `…/instance`, `…/instance/` | listing, 200 without the slash too (Node's ping) |
//! | `…/project/project-id`, `numeric-project-id`, `…/instance/zone`, `…/universe/universe-domain` (and `universe_domain`), `…/<account>/email` | text; JSON with `alt=json` |
//! | `…/instance/service-accounts/` | `default/` and every email; `?recursive=true`: JSON |
//! | `…/service-accounts/<default or email>/` | listing; `?recursive=true`: `{"aliases","email","scopes"}` |
//! | `…/<account>/aliases`, `scopes` | text |
//! | `…/<account>/token?scopes=a,b` | `{"access_token","expires_in","token_type":"Bearer"}` |
//! | `…/<account>/identity?audience=A&format=standard\|full&licenses=TRUE\|FALSE` | the JWT |
//! | a directory without its `/` | 301 to it |
//! | anything else | 404, Google's page |
//!
//! Every `/computeMetadata` request must carry `Metadata-Flavor: Google` and no
//! `X-Forwarded-For` (403 otherwise). Identity tokens are the broker's: they carry the standard
//! claims whatever `format` and `licenses` say (no `google.compute_engine` claims: the caller
//! is not a VM), so they are cached per (account, audience) only.
//!
//! `/readyz` on the health listener (which may listen beyond loopback) answers a bare
//! `not ready`; why is logged, and told on the metadata listener.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode, Uri};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use broker_core::ScopeSet;

use crate::accounts::{Account, Accounts};
use crate::cache::{Cache, Fetch, FetchError, Reason, TokenKey, Unserved};
use crate::config::ProjectSettings;
use crate::responses::{self, Reply};

/// The query parameters the protocol knows.
#[derive(Debug, Default)]
struct Query {
    recursive: bool,
    alt: Option<String>,
    scopes: Vec<String>,
    audience: Option<String>,
    format: Option<String>,
    wait_for_change: bool,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let mut parsed = Self::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*name {
                "recursive" => parsed.recursive = value.eq_ignore_ascii_case("true"),
                "alt" => parsed.alt = Some(value.into_owned()),
                "scopes" => parsed.scopes.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|scope| !scope.is_empty())
                        .map(str::to_owned),
                ),
                "audience" => parsed.audience = Some(value.into_owned()),
                "format" => parsed.format = Some(value.into_owned()),
                "wait_for_change" => parsed.wait_for_change = value.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        parsed
    }

    /// Whether a scalar is answered as JSON: `alt=json` only, as Google's metadata server
    /// (and the emulator) do; `recursive=true` applies to directories.
    fn wants_json(&self) -> bool {
        self.alt.as_deref() == Some("json")
    }
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The metadata listener: everything.
    Metadata,
    /// The health listener: `/readyz` and `/livez` only.
    Health,
}

/// Answers requests from the configuration and, for tokens, the cache.
#[derive(Debug)]
pub(crate) struct Handler<F> {
    accounts: Accounts,
    project: ProjectSettings,
    cache: Cache<F>,
    /// The default account's token with its own scopes: what readiness is about.
    default_key: TokenKey,
}

impl<F: Fetch> Handler<F> {
    /// A handler serving `accounts` and `project`, with tokens from `cache`.
    pub(crate) fn new(accounts: Accounts, project: ProjectSettings, cache: Cache<F>) -> Self {
        let default = accounts.default_index();
        let scopes = accounts
            .get(default)
            .map(|account| account.scopes.clone())
            .unwrap_or_else(ScopeSet::empty);
        let default_key = TokenKey::Access {
            account: default,
            scopes,
        };
        // Readiness is about this entry: a flood of other keys must not evict it.
        cache.pin(&default_key);
        Self {
            accounts,
            project,
            cache,
            default_key,
        }
    }

    /// The key whose token makes the sidecar ready.
    pub(crate) fn default_key(&self) -> &TokenKey {
        &self.default_key
    }

    /// The cache.
    pub(crate) fn cache(&self) -> &Cache<F> {
        &self.cache
    }

    /// `Ok` once a token for the default account could be served; otherwise why not.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        self.cache.servable(&self.default_key)
    }

    /// The answer to one request (its body has been checked already).
    pub(crate) async fn handle(
        &self,
        listener: Listener,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Reply {
        let Ok(path) = percent_decode_str(uri.path()).decode_utf8() else {
            return responses::not_found();
        };
        if method != Method::GET {
            let mut reply = responses::error_page(
                StatusCode::METHOD_NOT_ALLOWED,
                "This metadata server answers GET requests only.",
            );
            reply
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return reply;
        }
        match (&*path, listener) {
            ("/readyz", _) => self.ready(listener),
            ("/livez", _) => responses::plain(StatusCode::OK, "ok\n"),
            (_, Listener::Health) => responses::not_found(),
            ("/", Listener::Metadata) => responses::text(StatusCode::OK, "computeMetadata/\n"),
            (path, Listener::Metadata)
                if path == "/computeMetadata" || path.starts_with("/computeMetadata/") =>
            {
                if headers.contains_key("x-forwarded-for") {
                    return responses::forbidden(
                        "Requests with an X-Forwarded-For header are refused.",
                    );
                }
                if headers.get("metadata-flavor").map(HeaderValue::as_bytes) != Some(b"Google") {
                    return responses::forbidden("Missing Metadata-Flavor:Google header.");
                }
                let query = Query::parse(uri.query());
                if query.wait_for_change {
                    return responses::text(
                        StatusCode::BAD_REQUEST,
                        "wait_for_change is not supported by this metadata server\n",
                    );
                }
                let sub = match path.strip_prefix("/computeMetadata/v1") {
                    Some("") => "",
                    Some(rest) => match rest.strip_prefix('/') {
                        Some(sub) => sub,
                        None => return responses::not_found(),
                    },
                    None => return responses::not_found(),
                };
                self.metadata(sub, &query, uri.query()).await
            }
            _ => responses::not_found(),
        }
    }

    /// `/readyz`: the details only on the metadata listener (loopback); the health listener
    /// may be reachable from the pod network, which learns nothing of the broker's answers.
    fn ready(&self, listener: Listener) -> Reply {
        match self.readiness() {
            Ok(()) => responses::plain(StatusCode::OK, "ok\n"),
            Err(why) => {
                let email = self
                    .accounts
                    .get(self.default_key.account())
                    .map(|account| account.email.as_str())
                    .unwrap_or_default();
                match listener {
                    Listener::Metadata => responses::plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "not ready: no valid token for the default account {email}: {why}\n"
                        ),
                    ),
                    Listener::Health => {
                        tracing::info!(account = %email, reason = %why, "not ready: no valid token for the default account");
                        responses::plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }
        }
    }

    /// A path under `/computeMetadata/v1/`.
    async fn metadata(&self, sub: &str, query: &Query, raw_query: Option<&str>) -> Reply {
        let redirect = || {
            let location = match raw_query {
                Some(raw) if !raw.is_empty() => format!("/computeMetadata/v1/{sub}/?{raw}"),
                _ => format!("/computeMetadata/v1/{sub}/"),
            };
            responses::redirect(&location)
        };
        let project = &self.project;
        match sub {
            "" if query.recursive => responses::json(&json!({
                "instance": self.instance_json(),
                "project": self.project_json(),
                "universe": {"universeDomain": project.universe_domain},
            })),
            "" => responses::text(StatusCode::OK, "instance/\nproject/\nuniverse/\n"),
            // Node's ping asks for `instance` without the slash and wants a 200.
            "instance" | "instance/" if query.recursive => responses::json(&self.instance_json()),
            "instance" | "instance/" => responses::text(
                StatusCode::OK,
                if project.zone.is_some() {
                    "service-accounts/\nzone\n"
                } else {
                    "service-accounts/\n"
                },
            ),
            "project" | "universe" | "instance/service-accounts" => redirect(),
            "project/" if query.recursive => responses::json(&self.project_json()),
            "project/" => responses::text(StatusCode::OK, "numeric-project-id\nproject-id\n"),
            "universe/" if query.recursive => {
                responses::json(&json!({"universeDomain": project.universe_domain}))
            }
            "universe/" => responses::text(StatusCode::OK, "universe-domain\n"),
            "project/project-id" => scalar(query, &project.project_id),
            "project/numeric-project-id" => scalar(query, &project.numeric_project_id),
            "universe/universe-domain" | "universe/universe_domain" => {
                scalar(query, &project.universe_domain)
            }
            "instance/zone" => match self.zone() {
                Some(zone) => scalar(query, &zone),
                None => responses::not_found(),
            },
            "instance/service-accounts/" if query.recursive => {
                responses::json(&self.accounts_json())
            }
            "instance/service-accounts/" => {
                let mut listing = "default/\n".to_owned();
                for account in self.accounts.iter() {
                    listing.push_str(&account.email);
                    listing.push_str("/\n");
                }
                responses::text(StatusCode::OK, listing)
            }
            _ => {
                let Some(rest) = sub.strip_prefix("instance/service-accounts/") else {
                    return responses::not_found();
                };
                let (name, leaf) = match rest.split_once('/') {
                    Some((name, leaf)) => (name, Some(leaf)),
                    None => (rest, None),
                };
                let Some(index) = self.accounts.find(name) else {
                    return responses::not_found();
                };
                match leaf {
                    None => redirect(),
                    Some(leaf) => self.account(index, leaf, query).await,
                }
            }
        }
    }

    /// `instance/service-accounts/<account>/<leaf>`.
    async fn account(&self, index: usize, leaf: &str, query: &Query) -> Reply {
        let Some(account) = self.accounts.get(index) else {
            return responses::not_found();
        };
        match leaf {
            "" if query.recursive => responses::json(&account_json(account)),
            "" => responses::text(StatusCode::OK, "aliases\nemail\nidentity\nscopes\ntoken\n"),
            "email" => scalar(query, &account.email),
            "aliases" => responses::text(
                StatusCode::OK,
                if account.is_default { "default" } else { "" },
            ),
            "scopes" => responses::text(
                StatusCode::OK,
                account
                    .scopes
                    .iter()
                    .map(|scope| format!("{scope}\n"))
                    .collect::<String>(),
            ),
            "token" => self.token(index, account, query).await,
            "identity" => self.identity(index, account, query).await,
            _ => responses::not_found(),
        }
    }

    /// `…/token[?scopes=a,b]`.
    async fn token(&self, index: usize, account: &Account, query: &Query) -> Reply {
        let scopes = if query.scopes.is_empty() {
            account.scopes.clone()
        } else {
            match ScopeSet::parse(&query.scopes) {
                Ok(scopes) => scopes,
                Err(error) => {
                    return responses::text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid scope: {error}\n"),
                    );
                }
            }
        };
        if let Some(refused) = scopes.iter().find(|scope| !account.allows_scope(scope)) {
            return responses::forbidden(&format!(
                "The scope {refused} is not allowed for {} by this metadata server's configuration.",
                account.email
            ));
        }
        let key = TokenKey::Access {
            account: index,
            scopes,
        };
        match self.cache.get(&key).await {
            Ok(token) => responses::json(&json!({
                "access_token": token.secret.expose(),
                "expires_in": token.expires_in(self.cache.now()),
                "token_type": "Bearer",
            })),
            Err(unserved) => refusal(unserved),
        }
    }

    /// `…/identity?audience=A[&format=standard|full][&licenses=TRUE|FALSE]`.
    async fn identity(&self, index: usize, account: &Account, query: &Query) -> Reply {
        let Some(audience) = query.audience.as_deref().filter(|a| !a.is_empty()) else {
            return responses::text(
                StatusCode::BAD_REQUEST,
                "non-empty audience parameter required\n",
            );
        };
        // `format` is checked, but the broker's tokens are the same either way (as with
        // `licenses`): the cache keys on (account, audience) only.
        match query.format.as_deref() {
            None | Some("standard" | "full") => {}
            Some(other) => {
                return responses::text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid format: {other}\n"),
                );
            }
        }
        if !account.allows_audience(audience) {
            return responses::forbidden(&format!(
                "The audience {audience} is not allowed for {} by this metadata server's configuration.",
                account.email
            ));
        }
        let key = TokenKey::Identity {
            account: index,
            audience: audience.to_owned(),
        };
        match self.cache.get(&key).await {
            Ok(token) => responses::jwt(token.secret.expose()),
            Err(unserved) => refusal(unserved),
        }
    }

    /// `projects/<number>/zones/<zone>`, if a zone is configured.
    fn zone(&self) -> Option<String> {
        let project = &self.project;
        let zone = project.zone.as_ref()?;
        Some(format!(
            "projects/{}/zones/{zone}",
            project.numeric_project_id
        ))
    }

    fn instance_json(&self) -> Value {
        let mut instance = json!({"serviceAccounts": self.accounts_json()});
        if let Some(zone) = self.zone() {
            instance["zone"] = zone.into();
        }
        instance
    }

    fn project_json(&self) -> Value {
        let project = &self.project;
        let number = project.numeric_project_id.parse::<u64>().map_or_else(
            |_| Value::from(project.numeric_project_id.clone()),
            Value::from,
        );
        json!({"numericProjectId": number, "projectId": project.project_id})
    }

    fn accounts_json(&self) -> Value {
        let mut accounts = serde_json::Map::new();
        if let Some(default) = self.accounts.get(self.accounts.default_index()) {
            accounts.insert("default".to_owned(), account_json(default));
        }
        for account in self.accounts.iter() {
            accounts.insert(account.email.clone(), account_json(account));
        }
        accounts.into()
    }
}

/// `{"aliases","email","scopes"}`: what `?recursive=true` on an account answers.
fn account_json(account: &Account) -> Value {
    let aliases: &[&str] = if account.is_default {
        &["default"]
    } else {
        &[]
    };
    json!({
        "aliases": aliases,
        "email": account.email,
        "scopes": account.scopes.iter().collect::<Vec<_>>(),
    })
}

/// A scalar: text, or a JSON string when JSON is asked for.
fn scalar(query: &Query, value: &str) -> Reply {
    if query.wants_json() {
        responses::json(&Value::from(value))
    } else {
        responses::text(StatusCode::OK, value)
    }
}

/// The answer when no token can be served: 403 for the broker's policy, 400 for a request it
/// finds invalid, 503 with `Retry-After` when it is unavailable (or only has a token too close
/// to its expiry), 500 otherwise.
fn refusal(unserved: Unserved) -> Reply {
    let why = unserved.reason.to_string();
    match &unserved.reason {
        Reason::Fetch(FetchError::Denied(_)) => responses::error_page(StatusCode::FORBIDDEN, &why),
        Reason::Fetch(FetchError::Invalid(_)) => {
            responses::text(StatusCode::BAD_REQUEST, format!("{why}\n"))
        }
        Reason::Fetch(FetchError::Failed(_)) => {
            responses::error_page(StatusCode::INTERNAL_SERVER_ERROR, &why)
        }
        Reason::Fetch(FetchError::Unavailable { .. }) | Reason::TooShort(_) | Reason::Busy => {
            responses::unavailable(&why, unserved.retry_after)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_as_clients_send_them() {
        let query = Query::parse(Some(
            "scopes=https%3A%2F%2Fa.example%2Fx%2Chttps://b.example/y,%20&recursive=True&alt=json&licenses=TRUE&format=full&audience=https%3A%2F%2Faud",
        ));
        assert_eq!(query.scopes, ["https://a.example/x", "https://b.example/y"]);
        assert!(query.recursive && query.wants_json());
        assert_eq!(query.format.as_deref(), Some("full"));
        assert_eq!(query.audience.as_deref(), Some("https://aud"));
        assert!(!Query::parse(None).wants_json());
        assert!(!Query::parse(Some("recursive=true&alt=text")).wants_json());
        assert!(
            !Query::parse(Some("recursive=true")).wants_json(),
            "only alt=json makes a scalar JSON"
        );
        assert!(Query::parse(Some("wait_for_change=true")).wait_for_change);
    }
}
