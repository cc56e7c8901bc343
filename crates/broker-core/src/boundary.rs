//! Credential Access Boundaries: the downscoping rules of Google's STS.

use serde::{Deserialize, Serialize};

/// The most rules one boundary may hold (Google's limit).
pub const MAX_RULES: usize = 10;
/// The longest availability condition expression.
pub const MAX_EXPRESSION_LEN: usize = 2048;
/// The longest STS `options` JSON (`{"accessBoundary": ...}`) Google accepts, in characters.
pub const MAX_OPTIONS_LEN: usize = 4096;

/// Why a boundary was refused; `field` is relative to the boundary, such as
/// `rules[1].available_permissions[0]`, and empty when the boundary as a whole is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BoundaryError {
    /// The field at fault.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A Credential Access Boundary: a token restricted to the union of its rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessBoundary {
    /// The rules, at least one and at most [`MAX_RULES`].
    #[serde(rename = "accessBoundaryRules")]
    pub rules: Vec<AccessBoundaryRule>,
}

/// One rule: a resource and the roles available on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessBoundaryRule {
    /// Full resource name, e.g. `//storage.googleapis.com/projects/_/buckets/my-bucket`.
    pub available_resource: String,
    /// Roles, each written `inRole:roles/...`.
    pub available_permissions: Vec<String>,
    /// An optional CEL condition narrowing the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_condition: Option<AvailabilityCondition>,
}

/// A CEL condition on a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AvailabilityCondition {
    /// The CEL expression, at most [`MAX_EXPRESSION_LEN`] characters.
    pub expression: String,
    /// Optional title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl AccessBoundary {
    /// Checks the limits Google enforces, including the length of the STS `options` it makes
    /// ([`MAX_OPTIONS_LEN`]), so that a boundary that passes is never refused for its shape.
    pub fn validate(&self) -> Result<(), BoundaryError> {
        let error = |field: String, reason: &str| {
            Err(BoundaryError {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.rules.is_empty() || self.rules.len() > MAX_RULES {
            return error("rules".into(), "between 1 and 10 rules are required");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.available_resource.starts_with("//") || rule.available_resource.len() < 3 {
                return error(
                    format!("rules[{i}].available_resource"),
                    "must be a full resource name such as //storage.googleapis.com/projects/_/buckets/NAME",
                );
            }
            if rule.available_permissions.is_empty() {
                return error(
                    format!("rules[{i}].available_permissions"),
                    "at least one role is required",
                );
            }
            for (j, permission) in rule.available_permissions.iter().enumerate() {
                let role = permission.strip_prefix("inRole:").unwrap_or_default();
                if !(role.starts_with("roles/")
                    || role.starts_with("organizations/")
                    || role.starts_with("projects/"))
                {
                    return error(
                        format!("rules[{i}].available_permissions[{j}]"),
                        "must be a role written inRole:roles/NAME",
                    );
                }
            }
            if let Some(condition) = &rule.availability_condition
                && (condition.expression.trim().is_empty()
                    || condition.expression.len() > MAX_EXPRESSION_LEN)
            {
                return error(
                    format!("rules[{i}].availability_condition.expression"),
                    "must be a CEL expression of 1 to 2048 characters",
                );
            }
        }
        let options = self.sts_options().to_string().chars().count();
        if options > MAX_OPTIONS_LEN {
            return error(
                String::new(),
                &format!(
                    "the boundary makes {options} characters of STS options; Google accepts at most {MAX_OPTIONS_LEN}"
                ),
            );
        }
        Ok(())
    }

    /// The STS `options` value that applies this boundary: `{"accessBoundary": {...}}`.
    pub fn sts_options(&self) -> serde_json::Value {
        serde_json::json!({ "accessBoundary": self })
    }

    /// A SHA-256 digest of the boundary's canonical JSON, for cache keys.
    pub fn digest(&self) -> [u8; 32] {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json);
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(resource: &str, permission: &str) -> AccessBoundaryRule {
        AccessBoundaryRule {
            available_resource: resource.into(),
            available_permissions: vec![permission.into()],
            availability_condition: None,
        }
    }

    #[test]
    fn serializes_as_google_expects_and_validates() {
        let boundary = AccessBoundary {
            rules: vec![rule(
                "//storage.googleapis.com/projects/_/buckets/b",
                "inRole:roles/storage.objectViewer",
            )],
        };
        boundary.validate().expect("valid");
        assert_eq!(
            boundary.sts_options(),
            serde_json::json!({"accessBoundary": {"accessBoundaryRules": [{
                "availableResource": "//storage.googleapis.com/projects/_/buckets/b",
                "availablePermissions": ["inRole:roles/storage.objectViewer"]}]}})
        );
        let other = AccessBoundary {
            rules: vec![rule(
                "//storage.googleapis.com/projects/_/buckets/c",
                "inRole:roles/storage.objectViewer",
            )],
        };
        assert_ne!(boundary.digest(), other.digest());
    }

    #[test]
    fn each_violation_names_its_field() {
        let cases = [
            (AccessBoundary { rules: vec![] }, "rules"),
            (
                AccessBoundary {
                    rules: vec![rule("storage/b", "inRole:roles/x")],
                },
                "rules[0].available_resource",
            ),
            (
                AccessBoundary {
                    rules: vec![rule("//s/b", "roles/x")],
                },
                "rules[0].available_permissions[0]",
            ),
            (
                AccessBoundary {
                    rules: (0..11).map(|_| rule("//s/b", "inRole:roles/x")).collect(),
                },
                "rules",
            ),
            (
                AccessBoundary {
                    rules: (0..3)
                        .map(|i| AccessBoundaryRule {
                            availability_condition: Some(AvailabilityCondition {
                                expression: format!("resource.name == '{i}{}'", "x".repeat(2000)),
                                title: None,
                                description: None,
                            }),
                            ..rule("//s/b", "inRole:roles/x")
                        })
                        .collect(),
                },
                "",
            ),
        ];
        for (boundary, field) in cases {
            assert_eq!(boundary.validate().expect_err("invalid").field, field);
        }
    }
}
