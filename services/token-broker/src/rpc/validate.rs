//! Turning request fields into the broker's normalized types; every failure names its field.

use std::time::Duration;

use broker_core::{
    AccessBoundary, AccessBoundaryRule, AvailabilityCondition, CredentialName, ScopeSet,
};
use broker_proto::tokenbroker::v1 as pb;

use crate::status::RpcError;

/// The scope a request without scopes gets.
pub(crate) const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The longest email address accepted.
const MAX_EMAIL_LEN: usize = 254;

fn invalid(
    reason: &'static str,
    field: impl Into<String>,
    description: impl Into<String>,
) -> RpcError {
    RpcError::InvalidField {
        reason,
        field: field.into(),
        description: description.into(),
        max_seconds: None,
    }
}

/// `scopes`: validated, sorted, de-duplicated; empty means cloud-platform.
pub(crate) fn scopes(scopes: &[String]) -> Result<ScopeSet, RpcError> {
    let parsed = if scopes.is_empty() {
        ScopeSet::parse([DEFAULT_SCOPE])
    } else {
        ScopeSet::parse(scopes)
    };
    parsed.map_err(|e| invalid("INVALID_SCOPE", e.field(), e.to_string()))
}

/// `credential`: empty means the caller's default grant.
pub(crate) fn credential(name: &str) -> Result<Option<CredentialName>, RpcError> {
    if name.is_empty() {
        return Ok(None);
    }
    CredentialName::new(name)
        .map(Some)
        .map_err(|e| invalid("INVALID_FIELD", "credential", e.to_string()))
}

/// A Google Workspace user for domain-wide delegation: an email address, lowercased (Google
/// treats addresses case-insensitively, and one user must make one cache key and one audit
/// name). Empty means unset.
pub(crate) fn subject(field: &str, value: &str) -> Result<Option<String>, RpcError> {
    Ok(email(field, value)?.map(|address| address.to_ascii_lowercase()))
}

/// An email address field (`subject`, service accounts): empty means unset.
pub(crate) fn email(field: &str, value: &str) -> Result<Option<String>, RpcError> {
    if value.is_empty() {
        return Ok(None);
    }
    let valid = value.len() <= MAX_EMAIL_LEN
        && matches!(value.split_once('@'), Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.contains(|c: char| c.is_whitespace() || c.is_control()));
    if valid {
        Ok(Some(value.to_owned()))
    } else {
        Err(invalid(
            "INVALID_FIELD",
            field,
            format!("must be an email address of at most {MAX_EMAIL_LEN} bytes"),
        ))
    }
}

/// A whole-second duration within `max`, or unset.
pub(crate) fn duration(
    field: &str,
    value: Option<&prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, RpcError> {
    let Some(value) = value else { return Ok(None) };
    let error = |description: String| RpcError::InvalidField {
        reason: "INVALID_LIFETIME",
        field: field.to_owned(),
        description,
        max_seconds: Some(max.as_secs()),
    };
    if value.nanos != 0 || value.seconds < 0 {
        return Err(error("must be non-negative whole seconds".to_owned()));
    }
    let seconds = Duration::from_secs(value.seconds.unsigned_abs());
    if seconds < min || seconds > max {
        return Err(error(format!(
            "must be from {} s to {} s",
            min.as_secs(),
            max.as_secs()
        )));
    }
    Ok(Some(seconds))
}

/// `access_boundary`, checked against Google's limits.
pub(crate) fn access_boundary(
    value: Option<&pb::CredentialAccessBoundary>,
) -> Result<Option<AccessBoundary>, RpcError> {
    let Some(value) = value else { return Ok(None) };
    let boundary = AccessBoundary {
        rules: value
            .access_boundary_rules
            .iter()
            .map(|rule| AccessBoundaryRule {
                available_resource: rule.available_resource.clone(),
                available_permissions: rule.available_permissions.clone(),
                availability_condition: rule.availability_condition.as_ref().map(|c| {
                    AvailabilityCondition {
                        expression: c.expression.clone(),
                        title: Some(c.title.clone()).filter(|t| !t.is_empty()),
                        description: Some(c.description.clone()).filter(|d| !d.is_empty()),
                    }
                }),
            })
            .collect(),
    };
    boundary.validate().map_err(|e| {
        let field = if e.field.is_empty() {
            "access_boundary".to_owned()
        } else {
            format!(
                "access_boundary.{}",
                e.field.replacen("rules", "access_boundary_rules", 1)
            )
        };
        invalid("INVALID_ACCESS_BOUNDARY", field, e.reason)
    })?;
    Ok(Some(boundary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(error: RpcError) -> (String, &'static str) {
        match error {
            RpcError::InvalidField { field, reason, .. } => (field, reason),
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn empty_scopes_mean_cloud_platform_and_bad_ones_name_the_index() {
        assert_eq!(scopes(&[]).expect("default").joined(), DEFAULT_SCOPE);
        let bad = vec![DEFAULT_SCOPE.to_owned(), "cloud-platform".to_owned()];
        assert_eq!(
            field(scopes(&bad).expect_err("bad")),
            ("scopes[1]".to_owned(), "INVALID_SCOPE")
        );
    }

    #[test]
    fn emails_credentials_and_durations() {
        assert_eq!(email("subject", "").expect("empty"), None);
        assert_eq!(
            subject("subject", "Alice@Example.COM").expect("valid"),
            Some("alice@example.com".to_owned())
        );
        assert!(
            email("subject", "alice@example.com")
                .expect("valid")
                .is_some()
        );
        for bad in [
            "alice",
            "@example.com",
            "alice@localhost",
            "a b@example.com",
            "alice@example.com.",
        ] {
            assert_eq!(field(email("subject", bad).expect_err(bad)).0, "subject");
        }
        assert_eq!(
            field(credential("Bad_Name").expect_err("bad")).0,
            "credential"
        );
        let max = Duration::from_secs(43_200);
        let min = Duration::from_secs(60);
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(
            duration("lifetime", Some(&d(600, 0)), min, max).expect("ok"),
            Some(Duration::from_secs(600))
        );
        for bad in [d(30, 0), d(43_201, 0), d(600, 5), d(-1, 0)] {
            let error = duration("lifetime", Some(&bad), min, max).expect_err("bad");
            assert!(matches!(
                error,
                RpcError::InvalidField {
                    reason: "INVALID_LIFETIME",
                    max_seconds: Some(43_200),
                    ..
                }
            ));
        }
    }

    #[test]
    fn boundary_errors_use_proto_field_names() {
        let boundary = pb::CredentialAccessBoundary {
            access_boundary_rules: vec![pb::AccessBoundaryRule {
                available_resource: "//storage.googleapis.com/projects/_/buckets/b".into(),
                available_permissions: vec!["roles/storage.objectViewer".into()],
                availability_condition: None,
            }],
        };
        assert_eq!(
            field(access_boundary(Some(&boundary)).expect_err("bad")),
            (
                "access_boundary.access_boundary_rules[0].available_permissions[0]".to_owned(),
                "INVALID_ACCESS_BOUNDARY"
            )
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
        proptest::option::of(
            (any::<i64>(), any::<i32>())
                .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        )
    }

    fn any_boundary() -> impl Strategy<Value = Option<pb::CredentialAccessBoundary>> {
        let rule = (
            "\\PC{0,40}",
            proptest::collection::vec("\\PC{0,30}", 0..4),
            proptest::option::of(("\\PC{0,60}", "\\PC{0,10}", "\\PC{0,10}")),
        )
            .prop_map(
                |(resource, permissions, condition)| pb::AccessBoundaryRule {
                    available_resource: resource,
                    available_permissions: permissions,
                    availability_condition: condition.map(|(expression, title, description)| {
                        pb::AvailabilityCondition {
                            expression,
                            title,
                            description,
                        }
                    }),
                },
            );
        proptest::option::of(proptest::collection::vec(rule, 0..12).prop_map(|rules| {
            pb::CredentialAccessBoundary {
                access_boundary_rules: rules,
            }
        }))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a client sends, validation answers with a value or an error naming a
        /// field; it never panics.
        #[test]
        fn arbitrary_requests_are_validated_without_panic(
            raw_scopes in proptest::collection::vec("\\PC{0,300}|https://www\\.googleapis\\.com/auth/[a-z._-]{0,20}", 0..60),
            raw_credential in "\\PC{0,80}|[a-z][a-z0-9-]{0,70}",
            raw_subject in "\\PC{0,300}|[a-zA-Z0-9._%+-]{1,20}@[a-zA-Z0-9.-]{1,20}",
            lifetime in any_duration(),
            min_remaining in any_duration(),
            raw_boundary in any_boundary(),
        ) {
            let field_of = |error: RpcError| match error {
                RpcError::InvalidField { field, .. } => Ok(field),
                other => Err(TestCaseError::fail(format!("not a field error: {other}"))),
            };
            match scopes(&raw_scopes) {
                Ok(set) => prop_assert!(!set.is_empty() && set.len() <= broker_core::MAX_SCOPES),
                Err(error) => prop_assert!(field_of(error)?.starts_with("scopes")),
            }
            if let Err(error) = credential(&raw_credential) {
                prop_assert_eq!(field_of(error)?, "credential");
            }
            match subject("subject", &raw_subject) {
                Ok(Some(address)) => prop_assert_eq!(address.to_ascii_lowercase(), address),
                Ok(None) => prop_assert!(raw_subject.is_empty()),
                Err(error) => prop_assert_eq!(field_of(error)?, "subject"),
            }
            for (field, value) in [("lifetime", lifetime), ("min_remaining_validity", min_remaining)] {
                let max = Duration::from_secs(43_200);
                match duration(field, value.as_ref(), Duration::from_secs(60), max) {
                    Ok(Some(d)) => prop_assert!(d <= max && d >= Duration::from_secs(60)),
                    Ok(None) => prop_assert!(value.is_none()),
                    Err(error) => prop_assert_eq!(field_of(error)?, field),
                }
            }
            if let Err(error) = access_boundary(raw_boundary.as_ref()) {
                prop_assert!(field_of(error)?.starts_with("access_boundary"));
            }
        }
    }
}
