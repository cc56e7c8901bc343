//! `credential_source.format`: how the content of a `file` or `url` source holds the subject
//! token (google-protocols.md §2.4).

use broker_core::Secret;
use serde_json::Value;

use super::fields::Fields;
use crate::BackendError;

/// How a `file` or `url` source holds the subject token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Format {
    /// `{"type": "text"}` (the default): the whole content is the token, without the ASCII
    /// whitespace around it.
    Text,
    /// `{"type": "json", "subject_token_field_name": NAME}`: the content is a JSON object and
    /// the token is its top-level string field `NAME`.
    Json {
        /// `subject_token_field_name`.
        field: String,
    },
}

impl Format {
    /// Reads `credential_source.format` (absent: text). `type` is `text` (also when empty, as
    /// Python google-auth reads it) or `json`, which needs `subject_token_field_name`; a field
    /// name with `text` is refused, not ignored.
    pub(crate) fn parse(source: &mut Fields<'_>) -> Result<Self, BackendError> {
        let Some(mut format) = source.object("credential_source.format")? else {
            return Ok(Self::Text);
        };
        let kind = format.string("credential_source.format.type")?;
        let field = format.string("credential_source.format.subject_token_field_name")?;
        let parsed = match (kind.as_deref(), field) {
            (None | Some("text"), None) => Self::Text,
            (None | Some("text"), Some(_)) => {
                return Err(format.error(
                    "credential_source.format.subject_token_field_name",
                    "is only for the json format",
                ));
            }
            (Some("json"), Some(field)) => Self::Json { field },
            (Some("json"), None) => {
                return Err(format.error(
                    "credential_source.format.subject_token_field_name",
                    "is required by the json format",
                ));
            }
            (Some(_), _) => {
                return Err(format.error(
                    "credential_source.format.type",
                    "must be \"text\" or \"json\"",
                ));
            }
        };
        format.finish()?;
        Ok(parsed)
    }

    /// The subject token in `content`, or what is wrong with it (in words of our own: the
    /// content is a secret and is never quoted).
    ///
    /// Text is trimmed of ASCII whitespace, as Go's client does: Python's keeps a trailing
    /// newline, which no JWT, SAML assertion or token contains and which makes STS refuse the
    /// token. A JSON field is taken as it is, as both clients do.
    pub(crate) fn extract(&self, content: &str) -> Result<Secret, String> {
        let token = match self {
            Self::Text => Secret::new(content.trim_matches(|c: char| c.is_ascii_whitespace())),
            Self::Json { field } => {
                let mut value: Value = serde_json::from_str(content)
                    .map_err(|_| "is not JSON (the json format was configured)".to_owned())?;
                let object = value
                    .as_object_mut()
                    .ok_or_else(|| "is not a JSON object".to_owned())?;
                match object.remove(field) {
                    Some(Value::String(token)) => Secret::new(token),
                    Some(_) => return Err(format!("has a field {field:?} that is not a string")),
                    None => return Err(format!("has no field {field:?}")),
                }
            }
        };
        if token.expose().is_empty() {
            return Err("holds an empty subject token".to_owned());
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(format: Value) -> Result<Format, BackendError> {
        let Value::Object(object) = json!({"file": "/t", "format": format}) else {
            panic!("object");
        };
        Format::parse(&mut Fields::new(object, "f.json", "credential_source"))
    }

    #[test]
    fn formats_parse_strictly() {
        assert_eq!(parse(Value::Null).expect("default"), Format::Text);
        assert_eq!(parse(json!({"type": "text"})).expect("text"), Format::Text);
        assert_eq!(parse(json!({"type": ""})).expect("empty"), Format::Text);
        assert_eq!(
            parse(json!({"type": "json", "subject_token_field_name": "access_token"}))
                .expect("json"),
            Format::Json {
                field: "access_token".into()
            }
        );
        for (format, expected) in [
            (
                json!({"type": "json"}),
                "subject_token_field_name` is required",
            ),
            (
                json!({"type": "text", "subject_token_field_name": "x"}),
                "only for the json format",
            ),
            (json!({"type": "xml"}), "credential_source.format.type"),
            (
                json!({"type": "text", "colour": "red"}),
                "unknown field `credential_source.format.colour`",
            ),
            (json!("text"), "credential_source.format` must be an object"),
        ] {
            let error = parse(format.clone()).expect_err("invalid").to_string();
            assert!(error.contains(expected), "{format}: {error}");
        }
    }

    #[test]
    fn tokens_are_extracted_without_quoting_the_content() {
        assert_eq!(
            Format::Text
                .extract(" eyJ.token.sig\n")
                .expect("text")
                .expose(),
            "eyJ.token.sig"
        );
        let json = Format::Json {
            field: "id_token".into(),
        };
        assert_eq!(
            json.extract(r#"{"id_token": " eyJ.x ", "other": 1}"#)
                .expect("json")
                .expose(),
            " eyJ.x "
        );
        for (format, content) in [
            (&Format::Text, " \n"),
            (&json, "eyJ.secret"),
            (&json, r#"["eyJ.secret"]"#),
            (&json, r#"{"access_token": "eyJ.secret"}"#),
            (&json, r#"{"id_token": 5, "x": "eyJ.secret"}"#),
            (&json, r#"{"id_token": ""}"#),
        ] {
            let problem = format.extract(content).expect_err(content);
            assert!(!problem.contains("eyJ"), "{problem}");
        }
    }
}
