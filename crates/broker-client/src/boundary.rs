//! Credential Access Boundaries read from JSON in Google's format, as Google's documentation on
//! downscoping shows them:
//!
//! ```json
//! {"accessBoundary": {"accessBoundaryRules": [{
//!   "availableResource": "//storage.googleapis.com/projects/_/buckets/my-bucket",
//!   "availablePermissions": ["inRole:roles/storage.objectViewer"],
//!   "availabilityCondition": {
//!     "expression": "resource.name.startsWith('projects/_/buckets/my-bucket/objects/reports/')",
//!     "title": "reports only",
//!     "description": "optional"
//!   }
//! }]}}
//! ```
//!
//! The inner object, `{"accessBoundaryRules": [...]}`, is accepted too.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use broker_proto::tokenbroker::v1::{
    AccessBoundaryRule, AvailabilityCondition, CredentialAccessBoundary,
};
use serde_json::{Map, Value};

use crate::error::ClientError;

/// The largest boundary file read: far more than any boundary Google accepts (2048 characters
/// of JSON), little enough that a wrong path (a device, a log file) fails at once.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

const BOUNDARY: &str = "accessBoundary";
const RULES: &str = "accessBoundaryRules";
const RESOURCE: &str = "availableResource";
const PERMISSIONS: &str = "availablePermissions";
const CONDITION: &str = "availabilityCondition";
const EXPRESSION: &str = "expression";
const TITLE: &str = "title";
const DESCRIPTION: &str = "description";

/// Why a Credential Access Boundary could not be read: the file, the JSON path of the fault and
/// what is wrong. It names keys, never the values of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessBoundaryError {
    /// The file, for [`read_access_boundary`]; `None` for [`parse_access_boundary`].
    pub path: Option<PathBuf>,
    /// Where the fault is, as the path of keys and indexes that leads to it in the JSON, for
    /// example `accessBoundary.accessBoundaryRules[1].availablePermissions[0]`; empty when the
    /// document as a whole is at fault (unreadable, not JSON, not an object, an unknown
    /// top-level key).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for AccessBoundaryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "access boundary file {}", path.display())?,
            None => f.write_str("access boundary")?,
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for AccessBoundaryError {}

impl From<AccessBoundaryError> for ClientError {
    fn from(error: AccessBoundaryError) -> Self {
        Self::Config(error.to_string())
    }
}

/// Parses a Credential Access Boundary from JSON in Google's format,
/// `{"accessBoundary":{"accessBoundaryRules":[...]}}`, or its inner object
/// `{"accessBoundaryRules":[...]}`.
///
/// Only the shape is checked: the keys Google defines and no others (so that a misspelt key is
/// not silently dropped), with values of the right JSON types; `null` counts as absent for the
/// optional `availabilityCondition`, `title` and `description`. The broker checks the limits
/// (1 to 10 rules, roles written `inRole:...`, lengths) and answers INVALID_ARGUMENT (reason
/// INVALID_ACCESS_BOUNDARY) naming the field.
pub fn parse_access_boundary(json: &str) -> Result<CredentialAccessBoundary, AccessBoundaryError> {
    parse(json).map_err(|Fault { field, reason }| AccessBoundaryError {
        path: None,
        field,
        reason,
    })
}

/// Reads a Credential Access Boundary from a JSON file in Google's format (see
/// [`parse_access_boundary`]). A UTF-8 byte order mark is ignored; files over 1 MiB are
/// refused.
pub fn read_access_boundary(
    path: impl AsRef<Path>,
) -> Result<CredentialAccessBoundary, AccessBoundaryError> {
    let path = path.as_ref();
    let error = |Fault { field, reason }| AccessBoundaryError {
        path: Some(path.to_owned()),
        field,
        reason,
    };
    let text = read_text(path).map_err(|reason| {
        error(Fault {
            field: String::new(),
            reason,
        })
    })?;
    parse(&text).map_err(error)
}

fn read_text(path: &Path) -> Result<String, String> {
    let unreadable = |error: std::io::Error| format!("cannot be read: {error}");
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(format!(
            "is larger than {} KiB; a boundary is at most a few KiB of JSON",
            MAX_FILE_BYTES / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|error| format!("is not UTF-8 text ({})", error.utf8_error()))
}

/// A fault in the JSON: where and what.
struct Fault {
    field: String,
    reason: String,
}

fn fault<T>(field: &str, reason: impl Into<String>) -> Result<T, Fault> {
    Err(Fault {
        field: field.to_owned(),
        reason: reason.into(),
    })
}

fn parse(json: &str) -> Result<CredentialAccessBoundary, Fault> {
    let json = json.strip_prefix('\u{feff}').unwrap_or(json);
    // serde_json's syntax errors give the line and column, never the text.
    let document: Value = serde_json::from_str(json).map_err(|error| Fault {
        field: String::new(),
        reason: format!("not JSON: {error}"),
    })?;
    let Value::Object(document) = &document else {
        return fault(
            "",
            format!(
                "must be a JSON object with {BOUNDARY} (Google's format) or {RULES}, not {}",
                kind(&document)
            ),
        );
    };
    known_keys(document, "", &[BOUNDARY, RULES])?;
    let (rules, field) = match (document.get(BOUNDARY), document.get(RULES)) {
        (Some(_), Some(_)) => {
            return fault(
                "",
                format!("has both {BOUNDARY} and {RULES}; give {RULES} inside {BOUNDARY}"),
            );
        }
        (Some(boundary), None) => {
            let boundary = object(boundary, BOUNDARY)?;
            known_keys(boundary, BOUNDARY, &[RULES])?;
            (
                required(boundary, BOUNDARY, RULES)?,
                format!("{BOUNDARY}.{RULES}"),
            )
        }
        (None, Some(rules)) => (rules, RULES.to_owned()),
        (None, None) => {
            return fault(
                "",
                format!("has neither {BOUNDARY} (Google's format) nor {RULES}"),
            );
        }
    };
    let Value::Array(rules) = rules else {
        return fault(
            &field,
            format!("must be an array of rules, not {}", kind(rules)),
        );
    };
    let access_boundary_rules = rules
        .iter()
        .enumerate()
        .map(|(index, rule)| parse_rule(rule, &format!("{field}[{index}]")))
        .collect::<Result<_, _>>()?;
    Ok(CredentialAccessBoundary {
        access_boundary_rules,
    })
}

fn parse_rule(rule: &Value, field: &str) -> Result<AccessBoundaryRule, Fault> {
    let rule = object(rule, field)?;
    known_keys(rule, field, &[RESOURCE, PERMISSIONS, CONDITION])?;
    let available_resource = string(required(rule, field, RESOURCE)?, &join(field, RESOURCE))?;
    let permissions_field = join(field, PERMISSIONS);
    let available_permissions = match required(rule, field, PERMISSIONS)? {
        Value::Array(permissions) => permissions
            .iter()
            .enumerate()
            .map(|(index, permission)| string(permission, &format!("{permissions_field}[{index}]")))
            .collect::<Result<_, _>>()?,
        other => {
            return fault(
                &permissions_field,
                format!(
                    "must be an array of roles such as [\"inRole:roles/storage.objectViewer\"], \
                     not {}",
                    kind(other)
                ),
            );
        }
    };
    let availability_condition = match rule.get(CONDITION) {
        None | Some(Value::Null) => None,
        Some(condition) => Some(parse_condition(condition, &join(field, CONDITION))?),
    };
    Ok(AccessBoundaryRule {
        available_resource,
        available_permissions,
        availability_condition,
    })
}

fn parse_condition(condition: &Value, field: &str) -> Result<AvailabilityCondition, Fault> {
    let condition = object(condition, field)?;
    known_keys(condition, field, &[EXPRESSION, TITLE, DESCRIPTION])?;
    Ok(AvailabilityCondition {
        expression: string(
            required(condition, field, EXPRESSION)?,
            &join(field, EXPRESSION),
        )?,
        title: optional_string(condition, field, TITLE)?,
        description: optional_string(condition, field, DESCRIPTION)?,
    })
}

fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_owned()
    } else {
        format!("{field}.{key}")
    }
}

fn object<'a>(value: &'a Value, field: &str) -> Result<&'a Map<String, Value>, Fault> {
    match value {
        Value::Object(object) => Ok(object),
        other => fault(field, format!("must be an object, not {}", kind(other))),
    }
}

/// Refuses keys other than `expected`: a misspelt key would otherwise be dropped, and with it a
/// restriction.
fn known_keys(object: &Map<String, Value>, field: &str, expected: &[&str]) -> Result<(), Fault> {
    match object.keys().find(|key| !expected.contains(&key.as_str())) {
        Some(key) => fault(
            field,
            format!("unknown key {}; expected {}", quoted(key), one_of(expected)),
        ),
        None => Ok(()),
    }
}

/// The value of `key`, which must be present (it may still be `null`, which the caller refuses
/// by its type).
fn required<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<&'a Value, Fault> {
    object
        .get(key)
        .map_or_else(|| fault(&join(field, key), "missing"), Ok)
}

fn string(value: &Value, field: &str) -> Result<String, Fault> {
    match value {
        Value::String(string) => Ok(string.clone()),
        other => fault(field, format!("must be a string, not {}", kind(other))),
    }
}

fn optional_string(object: &Map<String, Value>, field: &str, key: &str) -> Result<String, Fault> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(value) => string(value, &join(field, key)),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A key as JSON would quote it, cut at 64 characters.
fn quoted(key: &str) -> String {
    const LONGEST: usize = 64;
    let shown: String = key.chars().take(LONGEST).collect();
    let quoted = serde_json::to_string(&shown).unwrap_or_default();
    if key.chars().count() > LONGEST {
        format!("{quoted}...")
    } else {
        quoted
    }
}

fn one_of(expected: &[&str]) -> String {
    match expected {
        [] => "nothing".to_owned(),
        [only] => (*only).to_owned(),
        [first @ .., last] => format!("{} or {last}", first.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOGLE: &str = r#"{
      "accessBoundary": {
        "accessBoundaryRules": [
          {
            "availableResource": "//storage.googleapis.com/projects/_/buckets/my-bucket",
            "availablePermissions": ["inRole:roles/storage.objectViewer"],
            "availabilityCondition": {
              "expression": "resource.name.startsWith('projects/_/buckets/my-bucket/objects/reports/')",
              "title": "reports only",
              "description": "Objects under reports/"
            }
          },
          {
            "availableResource": "//storage.googleapis.com/projects/_/buckets/other",
            "availablePermissions": [
              "inRole:roles/storage.objectViewer",
              "inRole:roles/storage.legacyBucketReader"
            ]
          }
        ]
      }
    }"#;

    fn expected() -> CredentialAccessBoundary {
        CredentialAccessBoundary {
            access_boundary_rules: vec![
                AccessBoundaryRule {
                    available_resource: "//storage.googleapis.com/projects/_/buckets/my-bucket"
                        .to_owned(),
                    available_permissions: vec!["inRole:roles/storage.objectViewer".to_owned()],
                    availability_condition: Some(AvailabilityCondition {
                        expression: "resource.name.startsWith('projects/_/buckets/my-bucket/objects/reports/')"
                            .to_owned(),
                        title: "reports only".to_owned(),
                        description: "Objects under reports/".to_owned(),
                    }),
                },
                AccessBoundaryRule {
                    available_resource: "//storage.googleapis.com/projects/_/buckets/other"
                        .to_owned(),
                    available_permissions: vec![
                        "inRole:roles/storage.objectViewer".to_owned(),
                        "inRole:roles/storage.legacyBucketReader".to_owned(),
                    ],
                    availability_condition: None,
                },
            ],
        }
    }

    #[test]
    fn parses_googles_format_and_its_inner_object() {
        assert_eq!(parse_access_boundary(GOOGLE), Ok(expected()));

        let inner = serde_json::from_str::<Value>(GOOGLE).unwrap_or_default()[BOUNDARY].to_string();
        assert!(inner.starts_with(r#"{"accessBoundaryRules":"#), "{inner}");
        assert_eq!(parse_access_boundary(&inner), Ok(expected()));

        // A byte order mark, `null` optional fields and no condition title are fine.
        let json = "\u{feff}{\"accessBoundaryRules\": [{\"availableResource\": \"//r\", \
                    \"availablePermissions\": [], \"availabilityCondition\": {\"expression\": \
                    \"true\", \"title\": null}}, {\"availableResource\": \"//s\", \
                    \"availablePermissions\": [\"inRole:roles/x\"], \
                    \"availabilityCondition\": null}]}";
        let boundary = parse_access_boundary(json);
        let Ok(boundary) = boundary else {
            panic!("a valid boundary: {boundary:?}");
        };
        let rules = &boundary.access_boundary_rules;
        assert_eq!(rules.len(), 2);
        assert!(
            rules[0].available_permissions.is_empty(),
            "the broker checks limits"
        );
        assert_eq!(
            rules[0].availability_condition,
            Some(AvailabilityCondition {
                expression: "true".to_owned(),
                title: String::new(),
                description: String::new(),
            })
        );
        assert_eq!(rules[1].availability_condition, None);

        // Limits are the broker's: no rules at all is its to refuse.
        assert_eq!(
            parse_access_boundary(r#"{"accessBoundary":{"accessBoundaryRules":[]}}"#),
            Ok(CredentialAccessBoundary::default())
        );
    }

    #[test]
    fn errors_name_the_json_path_and_the_fault() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "",
                "",
                "not JSON: EOF while parsing a value at line 1 column 0",
            ),
            (
                "{\n  \"accessBoundary\": {\n}",
                "",
                "not JSON: EOF while parsing an object at line 3 column 1",
            ),
            (
                "[]",
                "",
                "must be a JSON object with accessBoundary (Google's format) or \
                 accessBoundaryRules, not an array",
            ),
            (
                "{}",
                "",
                "has neither accessBoundary (Google's format) nor accessBoundaryRules",
            ),
            (
                r#"{"accessBoundary": {}, "accessBoundaryRules": []}"#,
                "",
                "has both accessBoundary and accessBoundaryRules; give accessBoundaryRules \
                 inside accessBoundary",
            ),
            (
                r#"{"accessboundary": {}}"#,
                "",
                r#"unknown key "accessboundary"; expected accessBoundary or accessBoundaryRules"#,
            ),
            (
                r#"{"accessBoundary": []}"#,
                "accessBoundary",
                "must be an object, not an array",
            ),
            (
                r#"{"accessBoundary": {}}"#,
                "accessBoundary.accessBoundaryRules",
                "missing",
            ),
            (
                r#"{"accessBoundary": {"accessBoundaryRules": [], "rules": []}}"#,
                "accessBoundary",
                r#"unknown key "rules"; expected accessBoundaryRules"#,
            ),
            (
                r#"{"accessBoundary": {"accessBoundaryRules": {}}}"#,
                "accessBoundary.accessBoundaryRules",
                "must be an array of rules, not an object",
            ),
            (
                r#"{"accessBoundaryRules": null}"#,
                "accessBoundaryRules",
                "must be an array of rules, not null",
            ),
            (
                r#"{"accessBoundaryRules": ["//r"]}"#,
                "accessBoundaryRules[0]",
                "must be an object, not a string",
            ),
            (
                r#"{"accessBoundaryRules": [{"availablePermissions": []}]}"#,
                "accessBoundaryRules[0].availableResource",
                "missing",
            ),
            (
                r#"{"accessBoundaryRules": [{"availableResource": 7, "availablePermissions": []}]}"#,
                "accessBoundaryRules[0].availableResource",
                "must be a string, not a number",
            ),
            (
                r#"{"accessBoundaryRules": [{"availableResource": "//r"}]}"#,
                "accessBoundaryRules[0].availablePermissions",
                "missing",
            ),
            (
                r#"{"accessBoundaryRules": [{"availableResource": "//r",
                    "availablePermissions": "inRole:roles/x"}]}"#,
                "accessBoundaryRules[0].availablePermissions",
                "must be an array of roles such as [\"inRole:roles/storage.objectViewer\"], \
                 not a string",
            ),
            (
                r#"{"accessBoundary": {"accessBoundaryRules": [
                    {"availableResource": "//r", "availablePermissions": ["inRole:roles/x"]},
                    {"availableResource": "//r", "availablePermissions": ["inRole:roles/x", true]}
                ]}}"#,
                "accessBoundary.accessBoundaryRules[1].availablePermissions[1]",
                "must be a string, not a boolean",
            ),
            (
                r#"{"accessBoundaryRules": [{"availableResource": "//r",
                    "availablePermission": ["inRole:roles/x"]}]}"#,
                "accessBoundaryRules[0]",
                r#"unknown key "availablePermission"; expected availableResource, availablePermissions or availabilityCondition"#,
            ),
            (
                r#"{"accessBoundaryRules": [{"availableResource": "//r",
                    "availablePermissions": [], "availabilityCondition": "true"}]}"#,
                "accessBoundaryRules[0].availabilityCondition",
                "must be an object, not a string",
            ),
            (
                r#"{"accessBoundaryRules": [{"availableResource": "//r",
                    "availablePermissions": [], "availabilityCondition": {"title": "t"}}]}"#,
                "accessBoundaryRules[0].availabilityCondition.expression",
                "missing",
            ),
            (
                r#"{"accessBoundaryRules": [{"availableResource": "//r",
                    "availablePermissions": [], "availabilityCondition": {"expression": null}}]}"#,
                "accessBoundaryRules[0].availabilityCondition.expression",
                "must be a string, not null",
            ),
            (
                r#"{"accessBoundaryRules": [{"availableResource": "//r",
                    "availablePermissions": [],
                    "availabilityCondition": {"expression": "true", "description": {}}}]}"#,
                "accessBoundaryRules[0].availabilityCondition.description",
                "must be a string, not an object",
            ),
            (
                r#"{"accessBoundaryRules": [{"availableResource": "//r",
                    "availablePermissions": [],
                    "availabilityCondition": {"expression": "true", "location": "x"}}]}"#,
                "accessBoundaryRules[0].availabilityCondition",
                r#"unknown key "location"; expected expression, title or description"#,
            ),
        ];
        for (json, field, reason) in cases {
            let error = parse_access_boundary(json).err();
            assert_eq!(
                error
                    .as_ref()
                    .map(|e| (e.field.as_str(), e.reason.as_str())),
                Some((*field, *reason)),
                "{json}"
            );
        }
    }

    #[test]
    fn errors_never_echo_values_and_cut_long_keys() {
        let json = r#"{"accessBoundaryRules": [{"availableResource": ["ya29.secret"],
            "availablePermissions": []}]}"#;
        let message = parse_access_boundary(json)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            message,
            "access boundary: accessBoundaryRules[0].availableResource: must be a string, not an \
             array"
        );
        let message = parse_access_boundary("ya29.secret-token")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.starts_with("access boundary: not JSON: "),
            "{message}"
        );
        assert!(!message.contains("ya29"), "{message}");

        let long = format!(r#"{{"{}\n": 1}}"#, "k".repeat(100));
        let reason = parse_access_boundary(&long)
            .err()
            .map(|e| e.reason)
            .unwrap_or_default();
        assert!(
            reason.starts_with(&format!("unknown key \"{}\"...;", "k".repeat(64))),
            "{reason}"
        );
    }

    #[test]
    fn files_are_read_and_their_errors_name_the_file() {
        let dir =
            std::env::temp_dir().join(format!("broker-client-boundary-{}", std::process::id()));
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let file = dir.join("boundary.json");
        assert!(std::fs::write(&file, GOOGLE).is_ok());
        assert_eq!(read_access_boundary(&file), Ok(expected()));

        let message = |path: &Path| {
            read_access_boundary(path)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let missing = dir.join("missing.json");
        assert!(
            message(&missing).starts_with(&format!(
                "access boundary file {}: cannot be read: ",
                missing.display()
            )),
            "{}",
            message(&missing)
        );
        assert!(
            message(&dir).starts_with(&format!(
                "access boundary file {}: cannot be read: ",
                dir.display()
            )),
            "{}",
            message(&dir)
        );
        assert!(std::fs::write(&file, b"{\"accessBoundaryRules\": [\xff]}").is_ok());
        assert_eq!(
            message(&file),
            format!(
                "access boundary file {}: is not UTF-8 text (invalid utf-8 sequence of 1 bytes \
                 from index 25)",
                file.display()
            )
        );
        assert!(
            std::fs::write(&file, r#"{"accessBoundary": {"accessBoundaryRules": [1]}}"#).is_ok()
        );
        let error = read_access_boundary(&file).err();
        assert_eq!(
            error
                .as_ref()
                .map(|e| (e.path.as_deref(), e.field.as_str())),
            Some((
                Some(file.as_path()),
                "accessBoundary.accessBoundaryRules[0]"
            ))
        );
        assert_eq!(
            error.map(ClientError::from),
            Some(ClientError::Config(format!(
                "access boundary file {}: accessBoundary.accessBoundaryRules[0]: must be an \
                 object, not a number",
                file.display()
            )))
        );
        let big = vec![b' '; 1024 * 1024 + 1];
        assert!(std::fs::write(&file, big).is_ok());
        assert!(
            message(&file)
                .ends_with(": is larger than 1024 KiB; a boundary is at most a few KiB of JSON")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
