//! The deny-by-default [`Policy`]: which callers may get which tokens, through which RPCs.
//!
//! The format, the loading rules and the authorization algorithm are documented on [`Policy`].
//! One file per job: the grant model (`grant`), service-account entries (`account`), what is
//! asked and what is answered (`request`), loading and load-time validation (`load`), and
//! evaluation and explanation (here).

mod account;
mod grant;
mod load;
mod request;
mod rpc;

use std::time::Duration;

use broker_core::CredentialName;

use crate::identity::CallerIdentity;
use grant::Allowed;
use load::RawPolicy;

pub use account::ServiceAccountPattern;
pub use grant::{CallerMatcher, Grant, RateLimit, SignJwtConstraints};
pub use load::PolicyError;
pub use request::{
    AccessRequest, Decision, Denial, DenialRule, ExchangeDecision, Explanation, GrantCheck,
    GrantOutcome, JwtClaims,
};
pub use rpc::{Rpc, RpcParseError};

/// The shortest `max_lifetime` a grant may set (the shortest lifetime a request may ask for).
pub const MIN_MAX_LIFETIME: Duration = Duration::from_secs(60);
/// The longest `max_lifetime` a grant may set (the longest lifetime Google issues: 12 hours).
pub const MAX_MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The longest `sign_jwt.max_expiry` a grant may set (the server refuses SignJwt payloads whose
/// `exp` is further ahead anyway).
pub const MAX_MAX_EXPIRY: Duration = Duration::from_secs(12 * 3600);
/// The most delegates a chain may have, in a grant's `delegates` as in a request.
pub const MAX_DELEGATES: usize = 10;
/// The subject-token types of ExchangeToken, as a grant's `subject_token_types` and a request
/// name them: a JWT, an OIDC ID token, a SAML 2.0 assertion, a signed AWS request, and a Google
/// access token (downscoping).
pub const SUBJECT_TOKEN_TYPES: [&str; 5] = [
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:saml2",
    "urn:ietf:params:aws:token-type:aws4_request",
    "urn:ietf:params:oauth:token-type:access_token",
];

/// The broker's authorization policy: a list of grants, and nothing is allowed that no grant
/// allows.
///
/// # Format
///
/// A policy is a TOML document holding an array of `[[grants]]` tables. Every table rejects
/// unknown keys, so a misspelt limit is a load error, never a limit silently ignored. A document
/// without grants is valid and denies everything.
///
/// ```
/// # use broker_authz::Policy;
/// # let text = r#"
/// [[grants]]
/// ## Required. Unique; named in denials (ErrorInfo metadata `grant`) and in audit events.
/// ## 1 to 63 lowercase letters, digits, '-', '_' and '.', starting with a letter.
/// name = "ci-deployer"
/// ## Required, except on a plain-exchange grant (see `plain-federation` below). The
/// ## credential (a configured credential name) this grant lets callers use.
/// credential = "prod-deployer"
/// ## Optional, default false. A request that leaves `credential` empty uses the credential of
/// ## the caller's default grant: the first grant, in file order, with `default = true` whose
/// ## callers match the caller. Not ExchangeToken: without `credential` it is a plain exchange,
/// ## which never uses the default grant.
/// default = true
/// ## Required, at least one entry; each entry sets exactly one key. A grant applies to a caller
/// ## that any entry matches. `dns` matches only certificates without a SPIFFE ID, and `cn`
/// ## only certificates without a SPIFFE ID and without DNS SANs (see `CallerIdentity`).
/// callers = [
///   { spiffe_id = "spiffe://example.org/ci/deployer" },  # exactly this SPIFFE ID
///   { spiffe_prefix = "spiffe://example.org/ci/" },      # IDs below this path; ends with '/'
///   { trust_domain = "example.org" },                    # any SPIFFE ID of this trust domain
///   { dns = "app.internal.example.org" },                # any DNS SAN, case-insensitive
///   { cn = "legacy-batch" },                             # the subject CN, exact
/// ]
/// ## Optional, default ["GetAccessToken"]. The RPCs the grant allows, by proto method name:
/// ## GetAccessToken, ExchangeToken, ImpersonateServiceAccount, GenerateIdToken, SignJwt,
/// ## SignBlob. An RPC a grant does not list is denied (rule `rpc`).
/// rpcs = ["GetAccessToken"]
/// ## Optional. Every requested scope must be one of `scopes` or start with one of
/// ## `scope_prefixes`. A prefix must be an https:// URL with a path below the host, end with
/// ## '/' or '.', and match neither cloud-platform nor cloud-platform.read-only: a prefix is
/// ## for a family of narrow scopes (`.../auth/cloud` would match `cloud-platform`).
/// scopes = ["https://www.googleapis.com/auth/cloud-platform"]
/// scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
/// ## Optional. Domain-wide delegation subjects allowed: an exact address (case-insensitive), or
/// ## any address whose domain (after the last '@') equals one of `subject_domains`; subdomains
/// ## do not count. Without both, no request with a subject is allowed.
/// subjects = ["alice@example.com"]
/// subject_domains = ["example.com"]
/// ## Optional. Caps requested lifetimes (a longer request is shortened, not denied): of
/// ## GetAccessToken and ImpersonateServiceAccount tokens. Where Google fixes the lifetime (about
/// ## an hour) and this is shorter, the request is denied instead (rule `max_lifetime`).
/// ## humantime syntax ("90s", "15m", "1h 30m"); whole seconds from 60 s to 12 h.
/// max_lifetime = "1h"
/// ## Optional. This grant's own limits for each caller, replacing the broker's `[limits]`
/// ## defaults: a token bucket (requests per second on average, up to `burst` at once), and
/// ## the most distinct cache keys (credential, principal, scopes or audience, subject,
/// ## delegates, boundary, lifetime) one caller may create per window.
/// rate_limit = { per_second = 20, burst = 40 }
/// distinct_keys = 32
///
/// ## Optional. A Credential Access Boundary applied to every token of this grant. A request
/// ## may bring its own boundary only if it is at least as narrow (see `Policy::authorize`).
/// [[grants.access_boundary.rules]]
/// available_resource = "//storage.googleapis.com/projects/_/buckets/build-artifacts"
/// available_permissions = ["inRole:roles/storage.objectViewer"]
/// availability_condition = { expression = "resource.name.startsWith('projects/_/buckets/build-artifacts/objects/releases/')", title = "releases only" }
///
/// [[grants]]
/// name = "batch-reader"
/// credential = "analytics-reader"
/// callers = [{ cn = "legacy-batch" }]
/// scopes = ["https://www.googleapis.com/auth/bigquery.readonly"]
///
/// ## Impersonation, ID tokens and signing, through the base credential `broker`.
/// [[grants]]
/// name = "app-service-accounts"
/// credential = "broker"
/// callers = [{ spiffe_id = "spiffe://example.org/app" }]
/// ## SignBlob, which signs any bytes, goes in a grant of its own: see `sign_jwt` below.
/// rpcs = ["ImpersonateServiceAccount", "GenerateIdToken", "SignJwt"]
/// ## Scopes of ImpersonateServiceAccount tokens (its default is cloud-platform).
/// scopes = ["https://www.googleapis.com/auth/cloud-platform"]
/// ## Optional. The service accounts callers may act as: the target of ImpersonateServiceAccount and of
/// ## GenerateIdToken with target_service_account, the signer of SignJwt and SignBlob (rule
/// ## `service_accounts`). An email (case-insensitive), or every account of one project written
/// ## *@PROJECT.iam.gserviceaccount.com (no other wildcard). Without it, none.
/// ## Needs one of those RPCs in `rpcs`.
/// service_accounts = [
///   "reader@my-project.iam.gserviceaccount.com",
///   "*@batch-project.iam.gserviceaccount.com",
/// ]
/// ## Optional. The delegation chains allowed, each in order, elements as in service_accounts
/// ## (rule `delegates`). Direct impersonation (no delegates) is always allowed; any other chain
/// ## must be listed. Each chain has 1 to 10 elements. Needs one of those RPCs in `rpcs`.
/// delegates = [
///   ["hop@my-project.iam.gserviceaccount.com"],
///   ["hop@my-project.iam.gserviceaccount.com", "*@batch-project.iam.gserviceaccount.com"],
/// ]
/// ## Optional. GenerateIdToken audiences, and the identity providers of ExchangeToken: a plain
/// ## exchange's, or the one a request naming a credential also names (a request that leaves it
/// ## to the credential is not checked: the grant for the credential allows its audience)
/// ## (rule `audiences`; one list for both RPCs: keep them in separate grants to keep them apart):
/// ## exact (compared byte for byte), or starting with one of `audience_prefixes`. A prefix is
/// ## a URL scheme such as "https://" (every audience of that scheme), a URL ending with '/'
/// ## ("https://example.com" would also match "https://example.com.evil.net"), or a resource
/// ## name ending with '/' such as "//iam.googleapis.com/projects/123/locations/global/
/// ## workloadIdentityPools/ci/" (every provider of that pool). Without both, no ID token and no
/// ## plain federation exchange. Needs GenerateIdToken or ExchangeToken in `rpcs`.
/// audiences = ["https://hello-abc123-uc.a.run.app"]
/// audience_prefixes = ["https://api.example.com/"]
///
/// ## Optional. Constraints on the claims of SignJwt payloads (rule `jwt_claims`); without the
/// ## table, any payload the server accepts (a JSON object whose exp, if any, is at most 12 h
/// ## ahead). Needs SignJwt in `rpcs`, and not SignBlob (which would sign the same JWT
/// ## unchecked); set at least one key. Unconstrained SignJwt and SignBlob are as strong as
/// ## the account's key: a JWT-bearer assertion they sign is worth the account's tokens of any
/// ## scope. Grant them as you would the key.
/// [grants.sign_jwt]
/// ## The payload must have an `aud` (a string or an array), and every value of it must be one
/// ## of these: a JWT for these audiences and no other.
/// required_audiences = ["https://api.example.com"]
/// ## The payload must have an `exp` at most this far after now. humantime syntax; whole
/// ## seconds from 1 s to 12 h.
/// max_expiry = "15m"
///
/// ## A plain-exchange grant: no `credential`, and `rpcs` exactly ["ExchangeToken"]. It allows
/// ## ExchangeToken requests that name no credential (and nothing else), which the broker sends
/// ## to Google's STS adding nothing. It cannot be a default grant.
/// [[grants]]
/// name = "plain-federation"
/// callers = [{ spiffe_prefix = "spiffe://example.org/ci/" }]
/// rpcs = ["ExchangeToken"]
/// ## The identity providers callers may exchange for (rule `audiences`, as above).
/// audience_prefixes = ["//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/"]
/// ## Optional. The subject-token types callers may bring to ExchangeToken (rule
/// ## `subject_token_types`): urn:ietf:params:oauth:token-type:jwt, ...:id_token, ...:saml2,
/// ## ...:access_token (a Google access token, to downscope) and
/// ## urn:ietf:params:aws:token-type:aws4_request. Without it, none. Needs ExchangeToken in
/// ## `rpcs`, and applies to exchanges naming a credential (on that credential's grants) as
/// ## to plain ones.
/// subject_token_types = ["urn:ietf:params:oauth:token-type:jwt"]
/// scopes = ["https://www.googleapis.com/auth/cloud-platform"]
///
/// ## Downscoping is a plain exchange too: an access token, no audience, no scope, a boundary.
/// ## The grant's boundary makes callers downscope only within it: a request's boundary must be
/// ## at least as narrow.
/// [[grants]]
/// name = "downscope-artifacts"
/// callers = [{ spiffe_id = "spiffe://example.org/ci/deployer" }]
/// rpcs = ["ExchangeToken"]
/// subject_token_types = ["urn:ietf:params:oauth:token-type:access_token"]
/// [[grants.access_boundary.rules]]
/// available_resource = "//storage.googleapis.com/projects/_/buckets/build-artifacts"
/// available_permissions = ["inRole:roles/storage.objectViewer"]
/// # "#;
/// let policy = Policy::from_toml_str(text)?;
/// assert_eq!(policy.grants().len(), 5);
/// assert!(policy.grant("plain-federation").is_some_and(|g| g.credential().is_none()));
/// # Ok::<(), broker_authz::PolicyError>(())
/// ```
///
/// # Loading
///
/// [`Policy::from_toml_str`] checks everything before the policy is used, and a
/// [`PolicyError`] names the place at fault, such as `grants[2].scopes[0]`: unknown keys,
/// missing or mistyped values, grant names and duplicate grant names, credential names, caller
/// entries (SPIFFE IDs and trust domains per the SPIFFE-ID specification, DNS names), RPC
/// names, scopes (by the rules of [`ScopeSet`](broker_core::ScopeSet)), scope prefixes,
/// subjects, service accounts and delegation chains (such as `grants[0].delegates[1][0]`),
/// audiences and audience prefixes, subject-token types (one of [`SUBJECT_TOKEN_TYPES`]),
/// `sign_jwt`, `max_lifetime`, rate limits and access boundaries (by
/// [`AccessBoundary::validate`](broker_core::AccessBoundary::validate)). A grant without
/// `credential` whose `rpcs` is not exactly `["ExchangeToken"]` is an error (at the grant), and
/// so is a plain-exchange grant with `default = true`. A key that only some RPCs read
/// (`service_accounts`, `delegates`, `audiences`, `audience_prefixes`,
/// `subject_token_types`, `sign_jwt`) on a grant that allows none of them is an error, not a
/// limit silently ignored; so are `sign_jwt` next to SignBlob, and an `access_boundary` on a
/// grant that allows GenerateIdToken, SignJwt or SignBlob (ID tokens and signatures cannot be
/// downscoped; ExchangeToken can be). Two `default = true` grants whose caller
/// entries are the same set are an error, since the second could never be anyone's default;
/// default grants with different caller entries may both match some caller, and then the first
/// in file order is that caller's default.
///
/// # Authorization
///
/// See [`Policy::authorize`], and for ExchangeToken [`Policy::authorize_exchange`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    grants: Vec<Grant>,
}

/// The checks of [`Grant::check`], in the order they run. A grant that fails a later check came
/// closer to allowing the request: the principal comes first (the service account, then the
/// chain to it; the audience, then the subject-token type, which say whose token is exchanged
/// and what kind of exchange it is), then what is done with it, so that a grant for the right
/// account that refuses a scope is named before a grant for another account, a grant for the
/// right identity provider that refuses the token's type before a grant for another provider,
/// and a downscoping grant that refuses a scope before a federation grant. (No RPC but
/// ExchangeToken asks for both an audience and scopes or a subject, so for the others the
/// audience's place among them makes no difference.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Rpc,
    ServiceAccount,
    Delegates,
    Audience,
    SubjectTokenType,
    Scopes,
    Subject,
    JwtClaims,
    Boundary,
}

/// Which grants are candidates for a request (besides matching the caller).
#[derive(Debug, Clone, Copy)]
enum Wanted<'a> {
    /// The grants for this credential.
    Credential(&'a CredentialName),
    /// The plain-exchange grants.
    PlainExchange,
    /// None: the request names no credential and the caller has no default grant, or
    /// [`Policy::authorize`] was asked about a plain exchange.
    Nothing,
}

#[derive(Debug)]
struct Failure {
    stage: Stage,
    disallowed: usize,
    rule: DenialRule,
}

impl Policy {
    /// Parses and validates a policy; see the type's documentation for the format.
    pub fn from_toml_str(text: &str) -> Result<Self, PolicyError> {
        let document = toml::de::Deserializer::parse(text)
            .map_err(|e| PolicyError::from_toml(text, "", &e))?;
        let raw: RawPolicy = serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            PolicyError::from_toml(text, &path, e.inner())
        })?;
        raw.validate()
    }

    /// The grants, in file order.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// The grant called `name`.
    pub fn grant(&self, name: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.name == name)
    }

    /// The caller's default grant: the first grant with `default = true` that matches it. Its
    /// credential (a default grant always has one) is the one a request without `credential`
    /// uses (the server needs it to check the credential's kind before the policy runs); not
    /// for ExchangeToken, where a request without `credential` is a plain exchange.
    pub fn default_grant(&self, caller: &CallerIdentity) -> Option<&Grant> {
        self.grants
            .iter()
            .find(|g| g.default && g.matches_caller(caller))
    }

    /// Decides whether `caller` may make `request`.
    ///
    /// 1. The credential is the request's, or the credential of the caller's
    ///    [default grant](Policy::default_grant) (none: rule `default_grant`). A request
    ///    without a credential is thus the same as one naming the default grant's credential;
    ///    except an ExchangeToken request without a credential, which is a plain exchange and
    ///    never uses the default grant (see [`Policy::authorize_exchange`]).
    /// 2. The candidates are the grants that match the caller (none: `no_grant`) and are for
    ///    that credential (none: `no_grant`). For a plain exchange, the candidates are the
    ///    plain-exchange grants that match the caller (none: `no_grant`); a plain-exchange grant
    ///    is never a candidate for any other request.
    /// 3. The request is allowed if one candidate allows all of it, and the first such grant
    ///    in file order makes the [`Decision`]. A candidate allows it if, in this order:
    ///    - it lists the RPC in its `rpcs` (rule `rpc`);
    ///    - the service account, if any, matches one of its `service_accounts` (rule
    ///      `service_accounts`);
    ///    - the delegation chain is empty or one of its `delegates`, element by element and in
    ///      order (rule `delegates`);
    ///    - the audience, if any (of an ID token, or a plain exchange's identity provider), is
    ///      one of its `audiences` or starts with one of its `audience_prefixes` (rule
    ///      `audiences`);
    ///    - for ExchangeToken, the subject-token type is one of its `subject_token_types` (rule
    ///      `subject_token_types`, value the type; a request without a type is denied);
    ///    - every scope is one of its `scopes` or starts with one of its `scope_prefixes` (rule
    ///      `scopes`; no scope asked, as for ID tokens, signing and downscoping, passes);
    ///    - the subject, if any, is allowed (rule `subjects`);
    ///    - for SignJwt, the payload's claims meet its `sign_jwt` constraints, `aud` checked
    ///      before `exp` (rule `jwt_claims`, value the claim's name);
    ///    - and the boundary is allowed (rule `access_boundary`).
    ///
    ///    Lifetimes are never denied, only capped at `max_lifetime` (see
    ///    [`Decision::lifetime_or`] and, where Google fixes the lifetime,
    ///    [`Decision::check_fixed_lifetime`]).
    /// 4. Boundaries: the grant's boundary always applies. A request's boundary replaces it if
    ///    every rule of it is covered by a rule of the grant's boundary (same resource, a
    ///    subset of the roles, and the same condition expression unless the grant's rule has
    ///    no condition), which makes it at least as narrow; otherwise it is denied. Without a
    ///    grant boundary, the request's boundary (or none) is used. So a grant with a boundary
    ///    that allows downscoping exchanges lets callers downscope only within that boundary.
    /// 5. Otherwise the [`Denial`] names the candidate that came closest (the one that failed
    ///    the latest check in the order above; see [`Denial::grant`]) and the rule it failed.
    ///    The order puts who is acted for before what is asked: so for ExchangeToken a grant for
    ///    the right identity provider that refuses the token's type or a scope is named before
    ///    a grant for another provider. (Only ExchangeToken asks for both an audience and
    ///    scopes.)
    ///
    /// A [`Decision`] names a credential, which a plain exchange has none of: answer
    /// ExchangeToken requests with [`Policy::authorize_exchange`]. Asked about a plain exchange,
    /// `authorize` has no candidates and denies it (rule `no_grant`), even where
    /// `authorize_exchange` would allow it; it never falls back to the default grant. An
    /// ExchangeToken request naming a credential gets the same answer from both.
    pub fn authorize(
        &self,
        caller: &CallerIdentity,
        request: &AccessRequest<'_>,
    ) -> Result<Decision, Denial> {
        self.evaluate(caller, request, false, None)
            .and_then(|allowed| decision(caller, allowed))
    }

    /// Decides whether `caller` may make the ExchangeToken `request`, as
    /// [`Policy::authorize`] does, and answers with an [`ExchangeDecision`], whose credential
    /// is `None` for a plain exchange.
    ///
    /// - With a credential (`request.credential` set), the candidates are the caller's grants
    ///   for that credential, which must list ExchangeToken in `rpcs`; the decision's
    ///   credential is the request's.
    /// - Without one, it is a plain exchange (federation for an `audience`, or downscoping):
    ///   the candidates are the caller's plain-exchange grants (grants without a credential,
    ///   whose `rpcs` is exactly `["ExchangeToken"]`); none: rule `no_grant`. The caller's
    ///   default grant plays no part.
    ///
    /// The server sets `rpc` to [`Rpc::ExchangeToken`], `scopes` (the requested ones with the
    /// cloud-platform default applied for federation; empty for downscoping),
    /// `subject_token_type`, `audience` (the request's: `None` for downscoping, and with a
    /// credential when the request leaves the audience to it) and `boundary`
    /// (`options.access_boundary`). Another RPC is answered as
    /// `authorize` answers it.
    pub fn authorize_exchange(
        &self,
        caller: &CallerIdentity,
        request: &AccessRequest<'_>,
    ) -> Result<ExchangeDecision, Denial> {
        self.evaluate(caller, request, true, None)
            .map(exchange_decision)
    }

    /// Like [`Policy::authorize`], and also says how every grant fared.
    pub fn explain(&self, caller: &CallerIdentity, request: &AccessRequest<'_>) -> Explanation {
        let mut grants = Vec::with_capacity(self.grants.len());
        let result = self
            .evaluate(caller, request, false, Some(&mut grants))
            .and_then(|allowed| decision(caller, allowed));
        Explanation { result, grants }
    }

    /// Like [`Policy::authorize_exchange`], and also says how every grant fared.
    pub fn explain_exchange(
        &self,
        caller: &CallerIdentity,
        request: &AccessRequest<'_>,
    ) -> Explanation<ExchangeDecision> {
        let mut grants = Vec::with_capacity(self.grants.len());
        let result = self
            .evaluate(caller, request, true, Some(&mut grants))
            .map(exchange_decision);
        Explanation { result, grants }
    }

    fn evaluate(
        &self,
        caller: &CallerIdentity,
        request: &AccessRequest<'_>,
        plain_exchange: bool,
        mut trace: Option<&mut Vec<GrantCheck>>,
    ) -> Result<Allowed<'_>, Denial> {
        let wanted = if request.is_plain_exchange() {
            if plain_exchange {
                Wanted::PlainExchange
            } else {
                Wanted::Nothing
            }
        } else {
            match request.credential {
                Some(credential) => Wanted::Credential(credential),
                None => self
                    .default_grant(caller)
                    .and_then(|g| g.credential.as_ref())
                    .map_or(Wanted::Nothing, Wanted::Credential),
            }
        };
        let mut caller_matched = false;
        let mut allowed: Option<Allowed<'_>> = None;
        let mut closest: Option<(&Grant, Failure)> = None;
        for grant in &self.grants {
            let candidate = match wanted {
                Wanted::Credential(credential) => grant.credential.as_ref() == Some(credential),
                Wanted::PlainExchange => grant.is_plain_exchange(),
                Wanted::Nothing => false,
            };
            let outcome = if !grant.matches_caller(caller) {
                GrantOutcome::CallerNotMatched
            } else if !candidate {
                caller_matched = true;
                GrantOutcome::CredentialNotMatched
            } else {
                caller_matched = true;
                match grant.check(request) {
                    Ok(ok) => {
                        allowed.get_or_insert(ok);
                        GrantOutcome::Allowed
                    }
                    Err(failure) => {
                        let outcome = GrantOutcome::Denied(failure.rule.clone());
                        let closer = closest.as_ref().is_none_or(|(_, best)| {
                            failure.stage > best.stage
                                || (failure.stage == best.stage
                                    && failure.disallowed < best.disallowed)
                        });
                        if closer {
                            closest = Some((grant, failure));
                        }
                        outcome
                    }
                }
            };
            match trace.as_deref_mut() {
                Some(trace) => trace.push(GrantCheck {
                    grant: grant.name.clone(),
                    outcome,
                }),
                None if allowed.is_some() => break,
                None => {}
            }
        }
        if let Some(allowed) = allowed {
            return Ok(allowed);
        }
        let deny = |grant: Option<&Grant>, rule| Denial {
            caller: caller.to_string(),
            grant: grant.map(|g| g.name.clone()),
            rule,
        };
        Err(match (closest, wanted) {
            (Some((grant, failure)), _) => deny(Some(grant), failure.rule),
            _ if !caller_matched => deny(None, DenialRule::NoGrantForCaller),
            (None, Wanted::Credential(credential)) => deny(
                None,
                DenialRule::CredentialNotGranted {
                    credential: credential.clone(),
                },
            ),
            _ if request.is_plain_exchange() => deny(None, DenialRule::NoPlainExchangeGrant),
            (None, _) => deny(None, DenialRule::NoDefaultGrant),
        })
    }
}

/// The [`Decision`] of an allowed request that is not a plain exchange, whose grant therefore
/// has a credential. (A plain-exchange grant is a candidate only in
/// [`Policy::authorize_exchange`], so the denial is never reached.)
fn decision(caller: &CallerIdentity, allowed: Allowed<'_>) -> Result<Decision, Denial> {
    let grant = allowed.grant;
    let Some(credential) = grant.credential.clone() else {
        return Err(Denial {
            caller: caller.to_string(),
            grant: None,
            rule: DenialRule::NoPlainExchangeGrant,
        });
    };
    Ok(Decision {
        grant: grant.name.clone(),
        credential,
        lifetime: allowed.lifetime,
        max_lifetime: grant.max_lifetime,
        boundary: allowed.boundary,
        rate_limit: grant.rate_limit,
        distinct_keys: grant.distinct_keys,
    })
}

fn exchange_decision(allowed: Allowed<'_>) -> ExchangeDecision {
    let grant = allowed.grant;
    ExchangeDecision {
        grant: grant.name.clone(),
        credential: grant.credential.clone(),
        max_lifetime: grant.max_lifetime,
        boundary: allowed.boundary,
        rate_limit: grant.rate_limit,
        distinct_keys: grant.distinct_keys,
    }
}
