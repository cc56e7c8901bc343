//! The checks of a [`TokenRequest`] a flow makes before it calls Google: what the flow cannot
//! do is [`SourceError::Unsupported`], a value it knows Google would refuse is
//! [`SourceError::InvalidRequest`], and neither costs a call.

use std::time::Duration;

use broker_core::{SourceError, TokenRequest};

/// Refuses a domain-wide-delegation `subject`: `who` (such as "the metadata server") cannot
/// act for a Workspace user.
pub(crate) fn no_subject(request: &TokenRequest, who: &str) -> Result<(), SourceError> {
    match request.subject {
        Some(_) => Err(SourceError::Unsupported {
            flow: "domain_wide_delegation",
            message: format!(
                "{who} cannot act for a Google Workspace user; use a service-account key or impersonation of an account with domain-wide delegation"
            ),
        }),
        None => Ok(()),
    }
}

/// Refuses a lifetime above `max`: `who` gets tokens of at most that.
pub(crate) fn lifetime_at_most(
    request: &TokenRequest,
    max: Duration,
    who: &str,
) -> Result<(), SourceError> {
    match request.lifetime {
        Some(lifetime) if lifetime > max => Err(SourceError::Unsupported {
            flow: "extended_lifetime",
            message: format!(
                "{who} gives tokens of at most {} s; {} s were asked for",
                max.as_secs(),
                lifetime.as_secs()
            ),
        }),
        _ => Ok(()),
    }
}

/// Checks the access boundary before a token is minted, so that a boundary STS would refuse
/// costs no call: [`SourceError::InvalidRequest`] (field `access_boundary`).
pub(crate) fn valid_boundary(request: &TokenRequest) -> Result<(), SourceError> {
    match &request.boundary {
        Some(boundary) => boundary
            .validate()
            .map_err(|e| SourceError::InvalidRequest {
                field: "access_boundary".to_owned(),
                message: e.to_string(),
            }),
        None => Ok(()),
    }
}

/// A plausible email (of a service account or a user, as Google answers it): `local@domain`,
/// at most 254 bytes, without spaces or control characters.
pub(crate) fn is_email(text: &str) -> bool {
    (3..=254).contains(&text.len())
        && text
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && text.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii())
        && !text.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_core::{AccessBoundary, ScopeSet};

    #[test]
    fn each_check_names_its_flow_or_field() {
        let mut request = TokenRequest::new(ScopeSet::empty());
        assert!(no_subject(&request, "x").is_ok());
        assert!(lifetime_at_most(&request, Duration::from_secs(3600), "x").is_ok());
        assert!(valid_boundary(&request).is_ok());

        request.subject = Some("alice@example.com".into());
        request.lifetime = Some(Duration::from_secs(3601));
        request.boundary = Some(AccessBoundary { rules: vec![] });
        assert!(matches!(
            no_subject(&request, "x"),
            Err(SourceError::Unsupported {
                flow: "domain_wide_delegation",
                ..
            })
        ));
        assert!(matches!(
            lifetime_at_most(&request, Duration::from_secs(3600), "x"),
            Err(SourceError::Unsupported {
                flow: "extended_lifetime",
                ..
            })
        ));
        assert!(matches!(
            valid_boundary(&request),
            Err(SourceError::InvalidRequest { field, .. }) if field == "access_boundary"
        ));
    }

    #[test]
    fn emails_are_plausible() {
        for good in ["a@b.c", "dev-user@example.com", "ü@例え.jp"] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "",
            "a@",
            "@b",
            "ab",
            "a b@c",
            "a@b\n",
            "a@b\u{1b}",
            "a@b\u{2028}",
        ] {
            assert!(!is_email(bad), "{bad:?}");
        }
    }
}
