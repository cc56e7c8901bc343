//! OAuth scope sets: validated, sorted and de-duplicated, so equal requests make equal keys.

use std::fmt;
use std::sync::Arc;

/// The most scopes one request may name.
pub const MAX_SCOPES: usize = 50;
/// The longest scope accepted, in bytes.
pub const MAX_SCOPE_LEN: usize = 256;

/// Why a scope list was refused; `index` is the position in the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// More than [`MAX_SCOPES`] scopes.
    #[error("at most {MAX_SCOPES} scopes may be requested, got {0}")]
    TooMany(usize),
    /// An empty scope.
    #[error("scopes[{index}] is empty")]
    Empty {
        /// Position in the request.
        index: usize,
    },
    /// A scope longer than [`MAX_SCOPE_LEN`].
    #[error("scopes[{index}] is longer than {MAX_SCOPE_LEN} bytes")]
    TooLong {
        /// Position in the request.
        index: usize,
    },
    /// Not an OAuth scope URL (or `openid`, `email`, `profile`).
    #[error(
        "scopes[{index}] is not an OAuth scope: it must be an https:// URL such as https://www.googleapis.com/auth/cloud-platform, or openid, email or profile"
    )]
    Malformed {
        /// Position in the request.
        index: usize,
    },
}

impl ScopeError {
    /// The request field at fault, such as `scopes[2]`.
    pub fn field(&self) -> String {
        match self {
            Self::TooMany(_) => "scopes".to_owned(),
            Self::Empty { index } | Self::TooLong { index } | Self::Malformed { index } => {
                format!("scopes[{index}]")
            }
        }
    }
}

/// A normalized set of OAuth scopes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeSet(Arc<[String]>);

impl ScopeSet {
    /// Validates, sorts and de-duplicates scopes.
    pub fn parse<I, S>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for (index, scope) in scopes.into_iter().enumerate() {
            let scope = scope.as_ref();
            if index >= MAX_SCOPES {
                return Err(ScopeError::TooMany(index + 1));
            }
            if scope.is_empty() {
                return Err(ScopeError::Empty { index });
            }
            if scope.len() > MAX_SCOPE_LEN {
                return Err(ScopeError::TooLong { index });
            }
            if !is_scope(scope) {
                return Err(ScopeError::Malformed { index });
            }
            out.push(scope.to_owned());
        }
        out.sort();
        out.dedup();
        Ok(Self(out.into()))
    }

    /// The empty set (the scopes of an ID token's key).
    pub fn empty() -> Self {
        Self(Arc::from(Vec::<String>::new()))
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// How many scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|s| s.as_str().cmp(scope)).is_ok()
    }

    /// Space-delimited, as OAuth sends them.
    pub fn joined(&self) -> String {
        self.0.join(" ")
    }
}

fn is_scope(scope: &str) -> bool {
    if matches!(scope, "openid" | "email" | "profile") {
        return true;
    }
    scope.strip_prefix("https://").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    })
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CP: &str = "https://www.googleapis.com/auth/cloud-platform";
    const RO: &str = "https://www.googleapis.com/auth/devstorage.read_only";

    #[test]
    fn order_and_duplicates_do_not_matter() {
        let a = ScopeSet::parse([CP, RO, CP]).expect("valid");
        let b = ScopeSet::parse([RO, CP]).expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert!(a.contains(RO));
        assert_eq!(a.joined(), format!("{CP} {RO}"));
    }

    #[test]
    fn every_kind_of_bad_scope_names_its_index() {
        let long = format!("https://x/{}", "a".repeat(MAX_SCOPE_LEN));
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("https://x/{i}")).collect();
        let cases: Vec<(Vec<String>, ScopeError)> = vec![
            (
                vec![CP.into(), String::new()],
                ScopeError::Empty { index: 1 },
            ),
            (vec![long], ScopeError::TooLong { index: 0 }),
            (
                vec!["cloud-platform".into()],
                ScopeError::Malformed { index: 0 },
            ),
            (
                vec!["http://insecure".into()],
                ScopeError::Malformed { index: 0 },
            ),
            (
                vec!["https://a b".into()],
                ScopeError::Malformed { index: 0 },
            ),
            (
                vec![r#"https://a"b"#.into(), r"https://a\b".into()],
                ScopeError::Malformed { index: 0 },
            ),
            (many, ScopeError::TooMany(MAX_SCOPES + 1)),
        ];
        for (scopes, expected) in cases {
            assert_eq!(
                ScopeSet::parse(&scopes),
                Err(expected.clone()),
                "{scopes:?}"
            );
        }
        assert_eq!(ScopeError::Malformed { index: 3 }.field(), "scopes[3]");
    }
}
