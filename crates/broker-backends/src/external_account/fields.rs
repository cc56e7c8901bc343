//! Reading the objects of an `external_account` file strictly: each field by its full path
//! (`credential_source.executable.command`, which names it in errors), a wrong type named,
//! and any field left unread refused ([`BackendError::UnknownField`]): Google's clients ignore
//! what they do not know, the broker does not leave a setting silently unused.

use serde_json::{Map, Value};

use crate::BackendError;
use crate::credential_file::field_error;

/// An object of the file, read field by field.
pub(crate) struct Fields<'a> {
    object: Map<String, Value>,
    origin: &'a str,
    /// The object's own path: empty for the file, else such as `credential_source`.
    path: &'static str,
}

impl<'a> Fields<'a> {
    /// The object at `path` (empty for the file itself) of the file `origin`.
    pub(crate) fn new(object: Map<String, Value>, origin: &'a str, path: &'static str) -> Self {
        Self {
            object,
            origin,
            path,
        }
    }

    /// The last segment of a field's path: its key in this object.
    fn key(path: &'static str) -> &'static str {
        path.rsplit('.').next().unwrap_or(path)
    }

    /// Whether the field is present (and not `null`).
    pub(crate) fn has(&self, path: &'static str) -> bool {
        self.object
            .get(Self::key(path))
            .is_some_and(|value| !value.is_null())
    }

    /// Removes a field; `null` counts as absent.
    fn take(&mut self, path: &'static str) -> Option<Value> {
        self.object
            .remove(Self::key(path))
            .filter(|value| !value.is_null())
    }

    /// An error about the field at `path`.
    pub(crate) fn error(&self, path: &'static str, problem: &str) -> BackendError {
        field_error(self.origin, path, problem)
    }

    /// A string field; an empty one counts as absent (as in Google's clients, which test
    /// these fields for truth).
    pub(crate) fn string(&mut self, path: &'static str) -> Result<Option<String>, BackendError> {
        match self.take(path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s).filter(|s| !s.is_empty())),
            Some(_) => Err(self.error(path, "must be a string")),
        }
    }

    /// A string field that must be there and not empty.
    pub(crate) fn required_string(&mut self, path: &'static str) -> Result<String, BackendError> {
        self.string(path)?
            .ok_or_else(|| self.error(path, "is missing or empty"))
    }

    /// A boolean field.
    pub(crate) fn boolean(&mut self, path: &'static str) -> Result<Option<bool>, BackendError> {
        match self.take(path) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(self.error(path, "must be true or false")),
        }
    }

    /// A non-negative integer field (a JSON integer, not a string or a fraction).
    pub(crate) fn integer(&mut self, path: &'static str) -> Result<Option<u64>, BackendError> {
        match self.take(path) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.error(path, "must be a non-negative integer")),
            Some(_) => Err(self.error(path, "must be a non-negative integer")),
        }
    }

    /// An object field, to be read in turn (and finished).
    pub(crate) fn object(
        &mut self,
        path: &'static str,
    ) -> Result<Option<Fields<'a>>, BackendError> {
        match self.take(path) {
            None => Ok(None),
            Some(Value::Object(object)) => Ok(Some(Fields::new(object, self.origin, path))),
            Some(_) => Err(self.error(path, "must be an object")),
        }
    }

    /// An object of strings (HTTP headers), in the file's order.
    pub(crate) fn string_map(
        &mut self,
        path: &'static str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        match self.take(path) {
            None => Ok(None),
            Some(Value::Object(object)) => object
                .into_iter()
                .map(|(name, value)| match value {
                    Value::String(value) => Ok((name, value)),
                    _ => Err(self.error(path, "must be an object whose values are strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.error(path, "must be an object of strings")),
        }
    }

    /// Refuses any field not read: [`BackendError::UnknownField`] naming the first (in
    /// alphabetical order) with its path.
    pub(crate) fn finish(self) -> Result<(), BackendError> {
        let Some(key) = self.object.keys().min() else {
            return Ok(());
        };
        let name = if key.len() <= 64
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            key.clone()
        } else {
            "(an unrecognised name)".to_owned()
        };
        Err(BackendError::UnknownField {
            origin: self.origin.to_owned(),
            field: if self.path.is_empty() {
                name
            } else {
                format!("{}.{name}", self.path)
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Fields<'static> {
        match value {
            Value::Object(object) => Fields::new(object, "f.json", "credential_source"),
            _ => panic!("an object"),
        }
    }

    #[test]
    fn fields_are_read_by_path_and_leftovers_refused() {
        let mut f = fields(json!({
            "file": "/t", "empty": "", "none": null, "n": 5, "b": true,
            "headers": {"a": "1"}, "format": {"type": "json"},
        }));
        assert!(f.has("credential_source.file"));
        assert!(!f.has("credential_source.none"));
        assert_eq!(
            f.string("credential_source.file")
                .expect("string")
                .as_deref(),
            Some("/t")
        );
        assert_eq!(f.string("credential_source.empty").expect("string"), None);
        assert_eq!(f.string("credential_source.none").expect("string"), None);
        assert_eq!(f.integer("credential_source.n").expect("integer"), Some(5));
        assert_eq!(f.boolean("credential_source.b").expect("bool"), Some(true));
        assert_eq!(
            f.string_map("credential_source.headers").expect("map"),
            Some(vec![("a".to_owned(), "1".to_owned())])
        );
        let format = f
            .object("credential_source.format")
            .expect("object")
            .expect("present");
        let error = format.finish().expect_err("type unread").to_string();
        assert!(
            error.contains("unknown field `credential_source.format.type`"),
            "{error}"
        );
        f.finish().expect("everything read");
    }

    #[test]
    fn wrong_types_and_odd_names_are_named_safely() {
        for (value, path, expected) in [
            (
                json!({"file": 5}),
                "credential_source.file",
                "must be a string",
            ),
            (
                json!({"n": -1}),
                "credential_source.n",
                "non-negative integer",
            ),
            (
                json!({"n": 1.5}),
                "credential_source.n",
                "non-negative integer",
            ),
            (json!({"b": "yes"}), "credential_source.b", "true or false"),
        ] {
            let mut f = fields(value);
            let error = match Fields::key(path) {
                "file" => f.string(path).map(|_| ()),
                "n" => f.integer(path).map(|_| ()),
                _ => f.boolean(path).map(|_| ()),
            }
            .expect_err(path)
            .to_string();
            assert!(error.contains(path) && error.contains(expected), "{error}");
        }
        let error = fields(json!({"headers": {"a": 1}}))
            .string_map("credential_source.headers")
            .expect_err("not strings")
            .to_string();
        assert!(error.contains("credential_source.headers"), "{error}");
        let error = fields(json!({"-----BEGIN PRIVATE KEY----- MIIE": 1}))
            .finish()
            .expect_err("unknown")
            .to_string();
        assert!(error.contains("(an unrecognised name)"), "{error}");
        assert!(!error.contains("MIIE"), "{error}");
    }
}
