//! Secrets that must never reach logs, errors or traces.

use std::fmt;

use zeroize::Zeroizing;

/// A secret string (access token, ID token, key, subject token): zeroized on drop; its `Debug`
/// and `Display` show only a short SHA-256 fingerprint, computed once when it is wrapped (it is
/// logged on every request that serves the secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: Zeroizing<String>,
    fingerprint: Box<str>,
}

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        let value = Zeroizing::new(value.into());
        let fingerprint = fingerprint(value.as_bytes()).into_boxed_str();
        Self { value, fingerprint }
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// `sha256:` and the first 12 hex digits of the SHA-256 of the secret: safe to log, enough
    /// to correlate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// `sha256:` and the first 12 hex digits of the SHA-256 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = String::with_capacity("sha256:".len() + 12);
    out.push_str("sha256:");
    for byte in &digest.as_ref()[..6] {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_truncated_sha256() {
        assert_eq!(fingerprint(b"abc"), "sha256:ba7816bf8f01");
        assert_eq!(Secret::new("abc").fingerprint(), "sha256:ba7816bf8f01");
    }

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
