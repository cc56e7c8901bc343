//! Secrets that must never reach logs, errors or traces.

use std::fmt;

use zeroize::Zeroizing;

/// A secret string (access token, ID token, key, subject token): zeroized on drop; its `Debug`
/// and `Display` show only a short SHA-256 fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `sha256:` and the first 12 hex digits of the SHA-256 of the secret: safe to log, enough
    /// to correlate.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }
}

/// `sha256:` and the first 12 hex digits of the SHA-256 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_show_only_a_fingerprint() {
        let secret = Secret::new("ya29.very-secret");
        for shown in [format!("{secret:?}"), format!("{secret}")] {
            assert!(!shown.contains("very-secret"), "{shown}");
            assert!(shown.contains("sha256:"), "{shown}");
        }
        assert_eq!(secret.fingerprint().len(), "sha256:".len() + 12);
        assert_eq!(secret.expose(), "ya29.very-secret");
        assert_ne!(
            secret.fingerprint(),
            Secret::new("ya29.other").fingerprint()
        );
    }
}
