//! What a caller asks for, and what the policy answers: a decision or a denial.

use std::fmt;
use std::time::Duration;

use broker_core::{AccessBoundary, CredentialName, ScopeSet};

use super::grant::RateLimit;
use super::rpc::Rpc;
use crate::identity::CallerIdentity;

/// What a caller asks for, already validated and normalized by the server (step 4 of the request
/// path).
///
/// Every field but `rpc` and `scopes` is optional, and a field that is unset (or empty) is not
/// checked, except `jwt_claims` (see there): the server must set each field the RPC's request
/// carries, as listed on the field. [`AccessRequest::new`] sets none of them, so a GetAccessToken
/// request means what it always did.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// The RPC being called.
    pub rpc: Rpc,
    /// The credential named in the request; `None` uses the caller's default grant, except for
    /// ExchangeToken, where `None` is a plain exchange (see
    /// [`Policy::authorize_exchange`](super::Policy::authorize_exchange)).
    pub credential: Option<&'a CredentialName>,
    /// The scopes asked for, with the RPC's default already applied: GetAccessToken,
    /// ImpersonateServiceAccount and ExchangeToken (cloud-platform for a federation exchange
    /// that asks for none). GenerateIdToken, SignJwt, SignBlob and downscoping exchanges ask
    /// for none: an empty set, which every grant allows.
    pub scopes: &'a ScopeSet,
    /// The domain-wide delegation subject.
    pub subject: Option<&'a str>,
    /// The requested lifetime; `None` leaves it to the flow (see [`Decision::lifetime_or`]).
    pub lifetime: Option<Duration>,
    /// The access boundary the request asks for (for ExchangeToken, `options.access_boundary`).
    pub boundary: Option<&'a AccessBoundary>,
    /// The service account the caller acts as, by email (rule `service_accounts`): the target
    /// of ImpersonateServiceAccount and of GenerateIdToken with `target_service_account`, the
    /// signer of SignJwt and SignBlob. `None` for GetAccessToken and for an ID token of the
    /// credential's own identity.
    pub service_account: Option<&'a str>,
    /// The delegation chain to `service_account`, in order (rule `delegates`); empty for
    /// direct impersonation, which every grant allows.
    pub delegates: &'a [String],
    /// The audience (rule `audiences`): of the ID token asked for (GenerateIdToken), or the
    /// identity provider of a plain exchange (ExchangeToken without `credential`; `None` for
    /// downscoping). For ExchangeToken with a credential, `None`: the credential's
    /// configuration fixes the audience (the server checks that a requested one equals it).
    pub audience: Option<&'a str>,
    /// The type of the subject token (ExchangeToken; rule `subject_token_types`), one of
    /// [`SUBJECT_TOKEN_TYPES`](super::SUBJECT_TOKEN_TYPES). Set it for every ExchangeToken
    /// request, with or without a credential: for ExchangeToken, `None` is denied by every
    /// grant.
    pub subject_token_type: Option<&'a str>,
    /// The claims of the payload to sign (SignJwt; rule `jwt_claims`). For SignJwt, `None` is
    /// a payload without `aud` and `exp`.
    pub jwt_claims: Option<JwtClaims<'a>>,
}

/// The claims of a SignJwt payload that a grant's `[grants.sign_jwt]` constraints check,
/// already parsed by the server (which has checked that the payload is a JSON object whose
/// `exp`, if any, is an integer in the future and at most 12 hours ahead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwtClaims<'a> {
    /// The values of the payload's `aud`: one for a string, each element of an array; empty
    /// when the payload has none.
    pub aud: &'a [String],
    /// The payload's `exp` minus now; `None` when it has no `exp`.
    pub expires_in: Option<Duration>,
}

impl<'a> AccessRequest<'a> {
    /// A request through `rpc` for `scopes` with the caller's default credential and nothing
    /// else.
    pub fn new(rpc: Rpc, scopes: &'a ScopeSet) -> Self {
        Self {
            rpc,
            credential: None,
            scopes,
            subject: None,
            lifetime: None,
            boundary: None,
            service_account: None,
            delegates: &[],
            audience: None,
            subject_token_type: None,
            jwt_claims: None,
        }
    }

    /// Whether this is a plain exchange: ExchangeToken without a credential, which only
    /// plain-exchange grants allow and which never uses the caller's default grant.
    pub fn is_plain_exchange(&self) -> bool {
        self.rpc == Rpc::ExchangeToken && self.credential.is_none()
    }
}

/// What the policy allowed: the effective request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The grant that allowed it (for the audit event).
    pub grant: String,
    /// The credential to use: the requested one, or the default grant's.
    pub credential: CredentialName,
    /// The requested lifetime capped at the grant's `max_lifetime`; `None` if the request left
    /// the lifetime to the flow.
    pub lifetime: Option<Duration>,
    /// The grant's `max_lifetime`.
    pub max_lifetime: Option<Duration>,
    /// The access boundary to apply: the request's (if it is allowed) or the grant's.
    pub boundary: Option<AccessBoundary>,
    /// The grant's own per-caller rate limit, if it sets one.
    pub rate_limit: Option<RateLimit>,
    /// The grant's own cap on distinct cache keys per caller, if it sets one.
    pub distinct_keys: Option<u32>,
}

impl Decision {
    /// The lifetime to mint with where the flow can choose it: the capped requested lifetime, or
    /// `default` capped at the grant's `max_lifetime`.
    pub fn lifetime_or(&self, default: Duration) -> Duration {
        cap(self.lifetime.unwrap_or(default), self.max_lifetime)
    }

    /// For flows where Google fixes the lifetime (`fixed`, about an hour): a denial with rule
    /// `max_lifetime` if the grant's `max_lifetime` is shorter, since the token cannot be
    /// shortened to it.
    pub fn check_fixed_lifetime(
        &self,
        caller: &CallerIdentity,
        fixed: Duration,
    ) -> Result<(), Denial> {
        check_fixed_lifetime(caller, &self.grant, self.max_lifetime, fixed)
    }
}

/// What the policy allowed for ExchangeToken
/// ([`Policy::authorize_exchange`](super::Policy::authorize_exchange)): the effective request.
/// Like [`Decision`], except that a plain exchange has no credential and that ExchangeToken
/// requests ask for no lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeDecision {
    /// The grant that allowed it (for the audit event).
    pub grant: String,
    /// The `external_account` credential whose configuration shapes the exchange: the
    /// request's. `None` for a plain exchange (a request without `credential`), which the
    /// broker sends to Google adding nothing; never the default grant's credential.
    pub credential: Option<CredentialName>,
    /// The grant's `max_lifetime`.
    pub max_lifetime: Option<Duration>,
    /// The access boundary to send as `options.access_boundary`: the request's (if it is
    /// allowed) or the grant's.
    pub boundary: Option<AccessBoundary>,
    /// The grant's own per-caller rate limit, if it sets one.
    pub rate_limit: Option<RateLimit>,
    /// The grant's own cap on distinct cache keys per caller, if it sets one.
    pub distinct_keys: Option<u32>,
}

impl ExchangeDecision {
    /// As [`Decision::check_fixed_lifetime`]: a denial with rule `max_lifetime` if the grant's
    /// `max_lifetime` is shorter than `fixed`, the lifetime Google gives the exchanged token.
    pub fn check_fixed_lifetime(
        &self,
        caller: &CallerIdentity,
        fixed: Duration,
    ) -> Result<(), Denial> {
        check_fixed_lifetime(caller, &self.grant, self.max_lifetime, fixed)
    }
}

fn cap(lifetime: Duration, max_lifetime: Option<Duration>) -> Duration {
    max_lifetime.map_or(lifetime, |max| lifetime.min(max))
}

fn check_fixed_lifetime(
    caller: &CallerIdentity,
    grant: &str,
    max_lifetime: Option<Duration>,
    fixed: Duration,
) -> Result<(), Denial> {
    match max_lifetime {
        Some(max) if fixed > max => Err(Denial {
            caller: caller.to_string(),
            grant: Some(grant.to_owned()),
            rule: DenialRule::LifetimeAboveMax {
                lifetime: fixed,
                max,
            },
        }),
        _ => Ok(()),
    }
}

/// The policy rule that denied a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenialRule {
    /// No grant's callers match the caller. Rule `no_grant`.
    NoGrantForCaller,
    /// The request named no credential and the caller has no default grant. Rule
    /// `default_grant`.
    NoDefaultGrant,
    /// Grants match the caller, but none is for this credential. Rule `no_grant`.
    CredentialNotGranted {
        /// The credential asked for.
        credential: CredentialName,
    },
    /// A plain exchange (ExchangeToken without `credential`), and grants match the caller, but
    /// none is a plain-exchange grant. Rule `no_grant`.
    NoPlainExchangeGrant,
    /// The grant does not list the RPC in its `rpcs`. Rule `rpc`.
    RpcNotAllowed {
        /// The RPC called.
        rpc: Rpc,
    },
    /// Some requested scopes are not allowed. Rule `scopes`.
    ScopeNotAllowed {
        /// The scopes that are not allowed, sorted; never empty.
        scopes: Vec<String>,
    },
    /// The domain-wide delegation subject is not allowed. Rule `subjects`.
    SubjectNotAllowed {
        /// The subject asked for.
        subject: String,
    },
    /// The service account is not among the grant's `service_accounts`. Rule
    /// `service_accounts`.
    ServiceAccountNotAllowed {
        /// The service account's email, as the request named it.
        service_account: String,
    },
    /// The delegation chain is not among the grant's `delegates`. Rule `delegates`.
    DelegatesNotAllowed {
        /// The chain's emails joined with `,`, as the request named them.
        chain: String,
    },
    /// The audience (of an ID token, or a token exchange's identity provider) is not allowed.
    /// Rule `audiences`.
    AudienceNotAllowed {
        /// The audience asked for.
        audience: String,
    },
    /// The ExchangeToken subject-token type is not among the grant's `subject_token_types`.
    /// Rule `subject_token_types`.
    SubjectTokenTypeNotAllowed {
        /// The type, as the request named it; `None` if the server set none.
        subject_token_type: Option<String>,
    },
    /// The SignJwt payload's `aud` is missing or names an audience outside the grant's
    /// `sign_jwt.required_audiences`. Rule `jwt_claims`, value `aud`.
    JwtAudienceNotAllowed,
    /// The SignJwt payload's `exp` is missing or later than the grant's `sign_jwt.max_expiry`
    /// allows. Rule `jwt_claims`, value `exp`.
    JwtExpiryNotAllowed {
        /// The grant's `sign_jwt.max_expiry`.
        max_expiry: Duration,
        /// Whether the payload has no `exp` at all.
        missing: bool,
    },
    /// The request's access boundary is wider than the grant's. Rule `access_boundary`.
    BoundaryWider {
        /// The index of the first request rule that no grant rule covers.
        rule: usize,
        /// That rule's resource.
        resource: String,
    },
    /// The flow's fixed lifetime exceeds the grant's `max_lifetime`. Rule `max_lifetime`.
    /// Never returned by [`Policy::authorize`](super::Policy::authorize) (which caps lifetimes); see
    /// [`Decision::check_fixed_lifetime`].
    LifetimeAboveMax {
        /// The lifetime the flow gives tokens.
        lifetime: Duration,
        /// The grant's maximum.
        max: Duration,
    },
}

impl DenialRule {
    /// The stable name of the rule, the `rule` metadata of ErrorInfo reason `POLICY_DENIED` in
    /// `error_reason.proto`: `no_grant`, `default_grant`, `rpc`, `service_accounts`,
    /// `delegates`, `scopes`, `subjects`, `audiences`, `subject_token_types`, `jwt_claims`,
    /// `access_boundary` or `max_lifetime`.
    pub fn rule_name(&self) -> &'static str {
        match self {
            Self::NoGrantForCaller
            | Self::CredentialNotGranted { .. }
            | Self::NoPlainExchangeGrant => "no_grant",
            Self::NoDefaultGrant => "default_grant",
            Self::RpcNotAllowed { .. } => "rpc",
            Self::ServiceAccountNotAllowed { .. } => "service_accounts",
            Self::DelegatesNotAllowed { .. } => "delegates",
            Self::ScopeNotAllowed { .. } => "scopes",
            Self::SubjectNotAllowed { .. } => "subjects",
            Self::AudienceNotAllowed { .. } => "audiences",
            Self::SubjectTokenTypeNotAllowed { .. } => "subject_token_types",
            Self::JwtAudienceNotAllowed | Self::JwtExpiryNotAllowed { .. } => "jwt_claims",
            Self::BoundaryWider { .. } => "access_boundary",
            Self::LifetimeAboveMax { .. } => "max_lifetime",
        }
    }

    /// The denied value, the `value` metadata of ErrorInfo: the credential, the RPC, the
    /// service account's email, the delegation chain joined with `,`, the first denied scope,
    /// the subject, the audience, the subject-token type (never the token), the name of the
    /// SignJwt claim (`aud` or `exp`, never the payload), or the resource of the boundary rule.
    /// None of them is secret.
    pub fn value(&self) -> Option<&str> {
        match self {
            Self::NoGrantForCaller
            | Self::NoDefaultGrant
            | Self::NoPlainExchangeGrant
            | Self::LifetimeAboveMax { .. } => None,
            Self::CredentialNotGranted { credential } => Some(credential.as_str()),
            Self::RpcNotAllowed { rpc } => Some(rpc.name()),
            Self::ServiceAccountNotAllowed { service_account } => Some(service_account),
            Self::DelegatesNotAllowed { chain } => Some(chain),
            Self::ScopeNotAllowed { scopes } => scopes.first().map(String::as_str),
            Self::SubjectNotAllowed { subject } => Some(subject),
            Self::AudienceNotAllowed { audience } => Some(audience),
            Self::SubjectTokenTypeNotAllowed { subject_token_type } => {
                subject_token_type.as_deref()
            }
            Self::JwtAudienceNotAllowed => Some("aud"),
            Self::JwtExpiryNotAllowed { .. } => Some("exp"),
            Self::BoundaryWider { resource, .. } => Some(resource),
        }
    }
}

/// A refused request. Its `Display` is safe to return to the caller: it names the caller, the
/// credential, the closest grant and the denied value, never a secret.
///
/// For ErrorInfo reason `POLICY_DENIED`: metadata `caller` is [`Denial::caller`], `grant` is
/// [`Denial::grant`] (absent when no grant matched the caller and credential), `rule` is
/// [`Denial::rule_name`] and `value` is [`Denial::value`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The caller, as [`CallerIdentity`]'s `Display` names it.
    pub caller: String,
    /// The grant that came closest: among the candidates (the grants that match the caller and
    /// are for the credential, or for a plain exchange the plain-exchange grants that match the
    /// caller), the one whose check failed latest (in the order of the checks: rpc, service
    /// account, delegates, audience, subject-token type, scopes, subject, SignJwt claims,
    /// boundary), ties going to the one with fewer disallowed scopes, then to the first in the
    /// file. `None` for `no_grant` and `default_grant`.
    pub grant: Option<String>,
    /// Why.
    pub rule: DenialRule,
}

impl Denial {
    /// See [`DenialRule::rule_name`].
    pub fn rule_name(&self) -> &'static str {
        self.rule.rule_name()
    }

    /// See [`DenialRule::value`].
    pub fn value(&self) -> Option<&str> {
        self.rule.value()
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caller = &self.caller;
        let grant = self.grant.as_deref().unwrap_or("(none)");
        match &self.rule {
            DenialRule::NoGrantForCaller => {
                write!(f, "the policy has no grant for caller {caller}")
            }
            DenialRule::NoDefaultGrant => write!(
                f,
                "caller {caller} has no default grant: name a credential in the request"
            ),
            DenialRule::CredentialNotGranted { credential } => write!(
                f,
                "no policy grant lets caller {caller} use credential {credential}"
            ),
            DenialRule::NoPlainExchangeGrant => write!(
                f,
                "no policy grant lets caller {caller} exchange tokens without a credential (a plain exchange)"
            ),
            DenialRule::RpcNotAllowed { rpc } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) does not allow {rpc}: the grant's rpcs must list it"
            ),
            DenialRule::ScopeNotAllowed { scopes } => {
                const SHOWN: usize = 5;
                let list = scopes
                    .iter()
                    .take(SHOWN)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let noun = if scopes.len() == 1 { "scope" } else { "scopes" };
                write!(
                    f,
                    "grant {grant} (the closest for caller {caller}) does not allow {noun} {list}"
                )?;
                if scopes.len() > SHOWN {
                    write!(f, " and {} more", scopes.len() - SHOWN)?;
                }
                Ok(())
            }
            DenialRule::SubjectNotAllowed { subject } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) does not allow domain-wide delegation to {subject}"
            ),
            DenialRule::ServiceAccountNotAllowed { service_account } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) does not allow acting as service account {service_account}: the grant's service_accounts must list it"
            ),
            DenialRule::DelegatesNotAllowed { chain } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) does not allow the delegation chain {chain}: the grant's delegates must list it, in this order"
            ),
            DenialRule::AudienceNotAllowed { audience } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) does not allow audience {audience}: the grant's audiences or audience_prefixes must allow it"
            ),
            DenialRule::SubjectTokenTypeNotAllowed {
                subject_token_type: Some(token_type),
            } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) does not allow exchanging subject tokens of type {token_type}: the grant's subject_token_types must list it"
            ),
            DenialRule::SubjectTokenTypeNotAllowed {
                subject_token_type: None,
            } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) does not allow an exchange without a subject-token type"
            ),
            DenialRule::JwtAudienceNotAllowed => write!(
                f,
                "grant {grant} (the closest for caller {caller}) signs only JWTs whose aud names audiences of its sign_jwt.required_audiences, and only those: the payload's aud is missing or names another"
            ),
            DenialRule::JwtExpiryNotAllowed {
                max_expiry,
                missing,
            } => {
                let max = max_expiry.as_secs();
                let problem = if *missing {
                    "has no exp"
                } else {
                    "expires later"
                };
                write!(
                    f,
                    "grant {grant} (the closest for caller {caller}) signs only JWTs with an exp at most {max} s from now, and the payload {problem}"
                )
            }
            DenialRule::BoundaryWider { rule, resource } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) imposes an access boundary, and rule {rule} of the requested boundary (resource {resource}) is wider than it"
            ),
            DenialRule::LifetimeAboveMax { lifetime, max } => write!(
                f,
                "grant {grant} limits tokens to {} s, but this credential's tokens live {} s",
                max.as_secs(),
                lifetime.as_secs()
            ),
        }
    }
}

impl std::error::Error for Denial {}

/// How one grant fared in [`Policy::explain`](super::Policy::explain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOutcome {
    /// None of its caller entries matches the caller.
    CallerNotMatched,
    /// It matches the caller but is not a candidate: it is for another credential (or, with no
    /// credential in the request, the caller has no default grant), or it is a plain-exchange
    /// grant and the request is not a plain exchange, or the request is a plain exchange and it
    /// is not a plain-exchange grant.
    CredentialNotMatched,
    /// It allows the request.
    Allowed,
    /// It matches the caller and credential, but this rule fails.
    Denied(DenialRule),
}

/// One grant's line in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantCheck {
    /// The grant's name.
    pub grant: String,
    /// How it fared.
    pub outcome: GrantOutcome,
}

/// Why a request is allowed or denied, grant by grant: for a dry-run or "why denied" answer.
/// `Explanation` is [`Policy::explain`](super::Policy::explain)'s, `Explanation<ExchangeDecision>`
/// [`Policy::explain_exchange`](super::Policy::explain_exchange)'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation<D = Decision> {
    /// What [`Policy::authorize`](super::Policy::authorize) (or
    /// [`Policy::authorize_exchange`](super::Policy::authorize_exchange)) answers.
    pub result: Result<D, Denial>,
    /// Every grant in policy order.
    pub grants: Vec<GrantCheck>,
}
