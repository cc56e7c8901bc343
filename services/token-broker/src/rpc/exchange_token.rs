//! `ExchangeToken`: an RFC 8693 exchange at Google's Security Token Service on a caller's
//! behalf. Federation passes the caller's external credential through (plainly, or shaped by
//! an `external_account` credential, which may then impersonate); downscoping turns a Google
//! access token into one limited by a Credential Access Boundary. Never cached.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use broker_authz::AccessRequest;
use broker_backends::{
    ExternalAccountSource, StsExchange, StsToken, exchange_token, pool_principal_set, upstream_host,
};
use broker_cache::CacheError;
use broker_core::{AccessBoundary, ScopeSet, Secret, SourceError};
use broker_proto::tokenbroker::v1 as pb;

use super::get_access_token::{FIXED_LIFETIME, timestamp};
use super::validate::{self, ACCESS_TOKEN_TYPE, Exchange};
use super::{CallContext, Inner, denied};
use crate::status::RpcError;

/// The kind reported for errors of a plain exchange, which uses no configured credential.
const PLAIN: &str = "token_exchange";
/// The longest issuer or subject an audit event carries from a subject token.
const MAX_AUDITED_CLAIM: usize = 256;

/// The subject token the caller presented, as a [`Secret`] (zeroized when dropped), and what
/// the audit events of the call say about it: its SHA-256 fingerprint and, for a JWT, its
/// issuer and subject; nothing else of it.
pub(super) struct Presented {
    token: Secret,
    issuer: Option<String>,
    subject: Option<String>,
}

impl Presented {
    /// Takes the subject token out of `request`.
    pub(super) fn take(request: &mut pb::ExchangeTokenRequest) -> Self {
        let is_jwt = JWT_TOKEN_TYPES.contains(&request.subject_token_type.as_str());
        let (issuer, subject) = if is_jwt {
            jwt_issuer_subject(&request.subject_token)
        } else {
            (None, None)
        };
        Self {
            token: Secret::new(std::mem::take(&mut request.subject_token)),
            issuer,
            subject,
        }
    }

    /// The audit event of a call that failed after it started.
    pub(super) fn audit_error(&self, context: &CallContext, error: &RpcError) {
        tracing::info!(
            target: "audit",
            rpc = context.rpc.name(),
            caller = %context.caller,
            outcome = "error",
            reason = error.reason().unwrap_or("INTERNAL"),
            subject_token = %self.token.fingerprint(),
            subject_token_iss = %self.issuer.as_deref().unwrap_or("-"),
            subject_token_sub = %self.subject.as_deref().unwrap_or("-"),
            error = %error,
            latency_us = context.latency_us(),
        );
    }
}

/// The subject-token types that are JWTs, whose issuer and subject are audited.
const JWT_TOKEN_TYPES: [&str; 2] = [
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
];

/// Serves one call, whose subject token the caller took out of `request` into `presented`:
/// the audit event of a failure is written by the caller.
pub(super) async fn serve(
    inner: &Inner,
    context: &CallContext,
    request: pb::ExchangeTokenRequest,
    presented: &Presented,
) -> Result<pb::ExchangeTokenResponse, RpcError> {
    // Request fields.
    validate::subject_token(presented.token.expose())?;
    let exchange = validate::subject_token_type(&request.subject_token_type)?;
    let requested_token_type = validate::requested_token_type(&request.requested_token_type)?;
    let audience = validate::provider_audience(&request.audience)?;
    let credential_name = validate::credential(&request.credential)?;
    let requested_scopes = if request.scopes.is_empty() {
        ScopeSet::empty()
    } else {
        validate::scopes(&request.scopes)?
    };
    let options = request.options.unwrap_or_default();
    let boundary = validate::access_boundary(options.access_boundary.as_ref())
        .map_err(|e| e.within("options"))?;

    let scopes = match exchange {
        Exchange::Downscoping => {
            downscoping_shape(
                audience.as_deref(),
                &requested_scopes,
                credential_name.is_some(),
                boundary.is_some(),
            )?;
            ScopeSet::empty()
        }
        Exchange::Federation(_) => {
            if audience.is_none() && credential_name.is_none() {
                return Err(validate::invalid(
                    "INVALID_FIELD",
                    "audience",
                    "required for federation unless `credential` names an external_account credential that supplies it",
                ));
            }
            if requested_scopes.is_empty() {
                validate::scopes(&[])?
            } else {
                requested_scopes
            }
        }
    };

    // A user project is for workforce pools: the audience's, or the credential's (checked
    // once it is known; only its format here).
    let user_project = validate::user_project(
        &options.user_project,
        credential_name.is_some() || audience.as_deref().is_some_and(validate::is_workforce),
    )?;

    // Policy, before anything about the credential is revealed.
    let policy = inner.policy.borrow().clone();
    let decision = policy
        .authorize_exchange(
            &context.caller,
            &AccessRequest {
                credential: credential_name.as_ref(),
                subject_token_type: Some(exchange.token_type()),
                audience: audience.as_deref(),
                boundary: boundary.as_ref(),
                ..AccessRequest::new(context.rpc, &scopes)
            },
        )
        .map_err(denied)?;

    // The credential that shapes the exchange, if any.
    let federation = match &decision.credential {
        Some(name) => {
            let credential = inner.credential(name)?;
            let unsupported = |flow, message: &str| RpcError::FlowUnsupported {
                credential: name.to_string(),
                kind: credential.source.kind(),
                flow,
                message: message.to_owned(),
            };
            let Some(source) = &credential.federation else {
                return Err(unsupported(
                    "token_exchange",
                    if credential.source.kind() == "external_account" {
                        "this credential's external_account file was found by Application Default Credentials; configure the file as a credential of kind external_account to shape exchanges with it"
                    } else {
                        "only an external_account credential can shape a token exchange; leave `credential` empty for a plain exchange"
                    },
                ));
            };
            if source.config().credential_source_kind() == "certificate" {
                return Err(unsupported(
                    "token_exchange",
                    "this credential exchanges over mutual TLS with its workload certificate, which a caller's subject token cannot use; leave `credential` empty for a plain exchange",
                ));
            }
            if user_project.is_some() && !source.is_workforce() {
                return Err(validate::invalid(
                    "INVALID_FIELD",
                    "options.user_project",
                    format!(
                        "only for workforce identity federation, and credential {name:?} is a workload identity pool's"
                    ),
                ));
            }
            if decision.boundary.is_some() && !credential.source.capabilities().downscoping {
                return Err(unsupported(
                    "access_boundary",
                    "Google does not downscope this credential's tokens (a workforce pool's, without impersonation)",
                ));
            }
            if let Some(audience) = &audience
                && audience != source.audience()
            {
                return Err(validate::invalid(
                    "INVALID_FIELD",
                    "audience",
                    format!(
                        "differs from the audience of credential {name:?}; leave it empty or set it to {}",
                        source.audience()
                    ),
                ));
            }
            Some((name.clone(), Arc::clone(source)))
        }
        None => None,
    };
    let provider = federation
        .as_ref()
        .map(|(_, source)| source.audience().to_owned())
        .or(audience);
    if federation.is_none()
        && decision.boundary.is_some()
        && provider.as_deref().is_some_and(validate::is_workforce)
    {
        return Err(validate::invalid(
            "INVALID_FIELD",
            "audience",
            "names a workforce pool's provider, whose tokens Google does not downscope, and this exchange must be downscoped (options.access_boundary, or the grant's access_boundary)",
        ));
    }

    // Google gives federated tokens an hour (the credential's impersonation may choose).
    if let Exchange::Federation(_) = exchange {
        let fixed = federation
            .as_ref()
            .and_then(|(_, source)| source.config().impersonated_lifetime())
            .unwrap_or(FIXED_LIFETIME);
        decision
            .check_fixed_lifetime(&context.caller, fixed)
            .map_err(denied)?;
    }
    inner
        .limits
        .admit(
            &context.caller,
            &decision.grant,
            decision.rate_limit,
            decision.distinct_keys,
            None,
            context.now,
        )
        .map_err(|l| super::limited(&context.caller, &decision.grant, l))?;

    // The exchange (and the credential's impersonation), within the caller's deadline.
    let call = Call {
        inner,
        context,
        subject_token: &presented.token,
        subject_token_type: exchange.token_type(),
        scopes: &scopes,
        user_project: user_project.as_deref(),
        boundary: decision.boundary.as_ref(),
        requested_token_type,
    };
    let issued = match (&federation, exchange) {
        (Some((name, source)), _) => call.shaped(name.as_str(), source).await?,
        (None, Exchange::Downscoping) => call.downscope().await?,
        (None, Exchange::Federation(_)) => {
            call.plain(provider.as_deref().unwrap_or_default()).await?
        }
    };

    // A workforce pool's sessions may be longer than an hour: the grant's cap still holds.
    if let Some(expires_at) = issued.expires_at {
        let lifetime = expires_at
            .duration_since(inner.clock.now())
            .unwrap_or_default();
        decision
            .check_fixed_lifetime(&context.caller, Duration::from_secs(lifetime.as_secs()))
            .map_err(denied)?;
    }

    let credential = federation
        .as_ref()
        .map(|(name, _)| name.as_str())
        .unwrap_or_default();
    tracing::info!(
        target: "audit",
        rpc = context.rpc.name(),
        caller = %context.caller,
        outcome = "granted",
        grant = %decision.grant,
        credential = %if credential.is_empty() { "-" } else { credential },
        exchange = if exchange == Exchange::Downscoping { "downscoping" } else { "federation" },
        audience = %provider.as_deref().unwrap_or("-"),
        subject_token_type = exchange.token_type(),
        subject_token = %presented.token.fingerprint(),
        subject_token_iss = %presented.issuer.as_deref().unwrap_or("-"),
        subject_token_sub = %presented.subject.as_deref().unwrap_or("-"),
        principal = %if issued.principal.is_empty() { "-" } else { &issued.principal },
        scopes = %scopes,
        boundary = decision.boundary.is_some(),
        token = %issued.token.fingerprint(),
        expires_in_s = issued.expires_at.map_or(0, |at| at.duration_since(context.now).unwrap_or_default().as_secs()),
        latency_us = context.latency_us(),
    );
    Ok(pb::ExchangeTokenResponse {
        access_token: issued.token.expose().to_owned(),
        issued_token_type: requested_token_type.to_owned(),
        token_type: "Bearer".to_owned(),
        expire_time: issued.expires_at.map(timestamp),
        principal: issued.principal,
        credential: credential.to_owned(),
    })
}

/// Downscoping takes a Google access token and a boundary, and nothing that names a provider.
fn downscoping_shape(
    audience: Option<&str>,
    scopes: &ScopeSet,
    credential: bool,
    boundary: bool,
) -> Result<(), RpcError> {
    let unwanted = if audience.is_some() {
        Some("audience")
    } else if !scopes.is_empty() {
        Some("scopes")
    } else if credential {
        Some("credential")
    } else {
        None
    };
    if let Some(field) = unwanted {
        return Err(validate::invalid(
            "INVALID_FIELD",
            field,
            format!("must be empty to downscope (subject_token_type {ACCESS_TOKEN_TYPE})"),
        ));
    }
    if !boundary {
        return Err(RpcError::InvalidField {
            reason: "INVALID_ACCESS_BOUNDARY",
            field: "options.access_boundary".to_owned(),
            description: format!(
                "is required to downscope (subject_token_type {ACCESS_TOKEN_TYPE})"
            ),
            max_seconds: None,
        });
    }
    Ok(())
}

/// What an exchange issued.
struct Issued {
    token: Secret,
    /// Unset for downscoping: the token expires with its subject token.
    expires_at: Option<SystemTime>,
    principal: String,
}

/// One exchange's inputs, after validation and policy.
struct Call<'a> {
    inner: &'a Inner,
    context: &'a CallContext,
    subject_token: &'a Secret,
    subject_token_type: &'static str,
    scopes: &'a ScopeSet,
    user_project: Option<&'a str>,
    boundary: Option<&'a AccessBoundary>,
    requested_token_type: &'static str,
}

impl Call<'_> {
    /// A plain federation exchange: the caller's request, adding nothing; then, with a
    /// boundary (the request's or the grant's), the federated token downscoped by a second
    /// exchange, so that the boundary certainly holds.
    async fn plain(&self, audience: &str) -> Result<Issued, RpcError> {
        let request = StsExchange {
            audience: Some(audience),
            scopes: Some(self.scopes),
            requested_token_type: self.requested_token_type,
            user_project: self.user_project,
            ..StsExchange::new(self.subject_token, self.subject_token_type)
        };
        let federated = self.sts(&request).await?;
        let expires_at = self.context.now + federated.expires_in.unwrap_or(FIXED_LIFETIME);
        let token = match self.boundary {
            Some(_) => self.downscoped(&federated.token).await?,
            None => federated.token,
        };
        Ok(Issued {
            token,
            expires_at: Some(expires_at),
            principal: pool_principal_set(audience),
        })
    }

    /// Downscoping the caller's Google access token.
    async fn downscope(&self) -> Result<Issued, RpcError> {
        Ok(Issued {
            token: self.downscoped(self.subject_token).await?,
            expires_at: None,
            principal: String::new(),
        })
    }

    /// `token` downscoped by the boundary (it expires with `token`).
    async fn downscoped(&self, token: &Secret) -> Result<Secret, RpcError> {
        let request = StsExchange {
            requested_token_type: self.requested_token_type,
            access_boundary: self.boundary,
            ..StsExchange::new(token, ACCESS_TOKEN_TYPE)
        };
        Ok(self.sts(&request).await?.token)
    }

    /// An exchange at the broker's STS.
    async fn sts(&self, request: &StsExchange<'_>) -> Result<StsToken, RpcError> {
        let inner = self.inner;
        self.context
            .bounded(&inner.sts_upstream, async {
                exchange_token(
                    &inner.http,
                    &inner.sts_url,
                    request,
                    Some(self.context.deadline),
                )
                .await
                .map_err(|error| self.upstream_error(error, "", PLAIN, &inner.sts_upstream))
            })
            .await
    }

    /// An exchange shaped by the `external_account` credential `name`.
    async fn shaped(&self, name: &str, source: &ExternalAccountSource) -> Result<Issued, RpcError> {
        let upstream = upstream_host(source.token_url());
        let token = self
            .context
            .bounded(&upstream, async {
                source
                    .exchange(
                        self.subject_token,
                        self.subject_token_type,
                        self.scopes,
                        self.user_project,
                        self.boundary,
                        Some(self.context.deadline),
                    )
                    .await
                    .map_err(|error| {
                        self.upstream_error(error, name, "external_account", &upstream)
                    })
            })
            .await?;
        Ok(Issued {
            expires_at: Some(token.expires_at),
            principal: token.principal.to_string(),
            token: token.secret,
        })
    }

    /// The error of a failed exchange; a field of the boundary is named by its place in the
    /// request, `options.access_boundary...`.
    fn upstream_error(
        &self,
        mut error: SourceError,
        credential: &str,
        kind: &'static str,
        upstream: &str,
    ) -> RpcError {
        let field = match &mut error {
            SourceError::Rejected(rejection) => rejection.field.as_mut(),
            SourceError::InvalidRequest { field, .. } => Some(field),
            _ => None,
        };
        if let Some(field) = field
            && field.starts_with("access_boundary")
        {
            *field = format!("options.{field}");
        }
        RpcError::Upstream {
            error: CacheError::Source(Arc::new(error)),
            credential: credential.to_owned(),
            kind,
            upstream: upstream.to_owned(),
            deadline: self.context.deadline_source,
            timeout: self.context.timeout,
        }
    }
}

/// The issuer and subject of a JWT subject token, for the audit event (unverified: Google
/// verifies the token; these say whose token the caller presented). Nothing else of the
/// token is read. Values are escaped (`\n`, `\u{..}`), then cut at
/// [`MAX_AUDITED_CLAIM`] characters.
fn jwt_issuer_subject(token: &str) -> (Option<String>, Option<String>) {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, None);
    };
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))
    else {
        return (None, None);
    };
    let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(&bytes) else {
        return (None, None);
    };
    let claim = |name: &str| {
        claims
            .get(name)
            .and_then(serde_json::Value::as_str)
            .map(|value| {
                value
                    .chars()
                    .flat_map(char::escape_default)
                    .take(MAX_AUDITED_CLAIM)
                    .collect::<String>()
            })
    };
    (claim("iss"), claim("sub"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", encode(r#"{"alg":"RS256"}"#), encode(payload))
    }

    #[test]
    fn audits_only_issuer_and_subject_of_jwts() {
        assert_eq!(
            jwt_issuer_subject(&jwt(
                r#"{"iss":"https://issuer.example","sub":"repo:org/app","email":"x@example.com"}"#
            )),
            (
                Some("https://issuer.example".to_owned()),
                Some("repo:org/app".to_owned())
            )
        );
        let (_, subject) = jwt_issuer_subject(&jwt(r#"{"sub":"a\nb"}"#));
        assert_eq!(subject.as_deref(), Some("a\\nb"));
        let (issuer, _) = jwt_issuer_subject(&jwt(&format!(r#"{{"iss":"{}"}}"#, "i".repeat(999))));
        assert_eq!(issuer.map(|i| i.len()), Some(MAX_AUDITED_CLAIM));
        for not_a_jwt in ["", "abc", "a.b", "a.b.c.d", "a.!!!.c", &jwt("[1]")] {
            assert_eq!(jwt_issuer_subject(not_a_jwt), (None, None), "{not_a_jwt}");
        }
    }

    #[test]
    fn downscoping_takes_only_a_token_and_a_boundary() {
        let none = ScopeSet::empty();
        assert!(downscoping_shape(None, &none, false, true).is_ok());
        for (audience, credential, boundary, field) in [
            (Some("aud"), false, true, "audience"),
            (None, true, true, "credential"),
            (None, false, false, "options.access_boundary"),
        ] {
            match downscoping_shape(audience, &none, credential, boundary) {
                Err(RpcError::InvalidField { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
