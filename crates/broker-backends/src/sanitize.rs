//! Making Google's text safe to quote: error messages reach logs, terminals and gRPC callers,
//! and a description (or anything on the path from Google, such as a proxy) could carry
//! control sequences, invisible characters or megabytes of text.

use std::fmt::Write as _;

/// The longest piece of Google's text quoted in a message, in characters after escaping; a
/// longer one is cut and ends with `…`.
pub(crate) const MAX_QUOTED: usize = 200;

/// The longest error code kept as [`broker_core::UpstreamRejection::error`].
pub(crate) const MAX_CODE: usize = 64;

/// The error code reported when Google gave none, or one that is not a plain code.
pub(crate) const UNKNOWN_CODE: &str = "unknown";

/// Google's `text`, fit to quote: control characters and other characters that do not print
/// (line and paragraph separators, bidirectional overrides, zero-width characters, the byte
/// order mark) escaped as `\n`, `\r`, `\t` or `\u{1b}`, and the result cut to [`MAX_QUOTED`]
/// characters followed by `…` when longer. Other characters, quotes and backslashes included,
/// are kept as they are.
pub(crate) fn quote(text: &str) -> String {
    let mut quoted = String::new();
    let mut length = 0;
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        match c {
            '\n' => piece.push_str("\\n"),
            '\r' => piece.push_str("\\r"),
            '\t' => piece.push_str("\\t"),
            c if is_unprintable(c) => {
                let _ = write!(piece, "\\u{{{:x}}}", u32::from(c));
            }
            c => piece.push(c),
        }
        let piece_length = piece.chars().count();
        if length + piece_length > MAX_QUOTED {
            quoted.push('…');
            break;
        }
        quoted.push_str(&piece);
        length += piece_length;
    }
    quoted
}

/// Control characters (Unicode `Cc`), line and paragraph separators, and the invisible
/// formatting characters that can reorder or hide text.
fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

/// Google's error code as reported: `code` when it is 1 to [`MAX_CODE`] characters of
/// `[A-Za-z0-9_.-]`, else (absent, empty, too long or anything else) [`UNKNOWN_CODE`].
pub(crate) fn error_code(code: Option<&str>) -> String {
    match code {
        Some(code)
            if (1..=MAX_CODE).contains(&code.len())
                && code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) =>
        {
            code.to_owned()
        }
        _ => UNKNOWN_CODE.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_what_does_not_print_and_caps_the_length() {
        let long = "x".repeat(10_000);
        let cut = format!("{}…", "x".repeat(MAX_QUOTED));
        let cases: [(&str, &str); 9] = [
            ("Invalid JWT Signature.", "Invalid JWT Signature."),
            ("line one\nline two", "line one\\nline two"),
            ("a\tb\r\n", "a\\tb\\r\\n"),
            ("\u{1b}[31mred\u{1b}[0m", "\\u{1b}[31mred\\u{1b}[0m"),
            (
                "nul\0 del\u{7f} csi\u{9b}",
                "nul\\u{0} del\\u{7f} csi\\u{9b}",
            ),
            (
                "rtl\u{202e}txt.exe zero\u{200b}width\u{feff}",
                "rtl\\u{202e}txt.exe zero\\u{200b}width\\u{feff}",
            ),
            (
                "Invalid value for \"audience\" \\ é ✓",
                "Invalid value for \"audience\" \\ é ✓",
            ),
            (&long, &cut),
            ("", ""),
        ];
        for (text, expected) in cases {
            assert_eq!(quote(text), expected, "{text:?}");
        }
        // The cap counts escaped characters, and never splits an escape.
        let escapes = quote(&"\u{1b}".repeat(100));
        assert!(escapes.ends_with("\\u{1b}…"), "{escapes}");
        assert_eq!(escapes.chars().count(), 200 / 6 * 6 + 1);
        // A description of 10,000 characters with control characters in it.
        let mixed = quote(&"ab\ncd\u{1b}[31m".repeat(1000));
        assert!(mixed.chars().count() <= MAX_QUOTED + 1, "{mixed}");
        assert!(mixed.ends_with('…'));
        assert!(!mixed.chars().any(|c| c.is_control()), "{mixed}");
    }

    #[test]
    fn error_codes_are_plain_or_unknown() {
        let long = "a".repeat(MAX_CODE);
        let too_long = "a".repeat(MAX_CODE + 1);
        let cases: [(Option<&str>, &str); 11] = [
            (Some("invalid_grant"), "invalid_grant"),
            (Some("IAM_PERMISSION_DENIED"), "IAM_PERMISSION_DENIED"),
            (Some("v1.error-code_2"), "v1.error-code_2"),
            (Some(&long), &long),
            (Some(&too_long), UNKNOWN_CODE),
            (Some(""), UNKNOWN_CODE),
            (None, UNKNOWN_CODE),
            (Some("invalid grant"), UNKNOWN_CODE),
            (Some("invalid_grant\n"), UNKNOWN_CODE),
            (Some("\u{1b}[31m"), UNKNOWN_CODE),
            (Some("invalíd"), UNKNOWN_CODE),
        ];
        for (code, expected) in cases {
            assert_eq!(error_code(code), expected, "{code:?}");
        }
    }
}
