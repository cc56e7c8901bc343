//! Service-account entries of a grant (`service_accounts`, `delegates`): an exact email, or
//! every account of one project.

use std::fmt;

/// The domain of a project's user-managed service accounts, after the project id.
const PROJECT_DOMAIN_SUFFIX: &str = ".iam.gserviceaccount.com";

/// The longest service-account email a request may name (the proto's limit).
const MAX_EMAIL_LEN: usize = 254;

/// One entry of a grant's `service_accounts`, or one element of a `delegates` chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceAccountPattern {
    /// Exactly this service account, by email, lowercase (compared ignoring ASCII case).
    Email(String),
    /// Every service account of this project: written `*@PROJECT.iam.gserviceaccount.com`.
    /// Holds the project id.
    Project(String),
}

impl ServiceAccountPattern {
    /// Parses a policy entry; the error message does not repeat the entry's place.
    ///
    /// An entry is an email address (case-insensitive, stored lowercase) or
    /// `*@PROJECT.iam.gserviceaccount.com`, where PROJECT is a Google Cloud project id: 6 to 30
    /// lowercase letters, digits and hyphens, starting with a letter and not ending with a
    /// hyphen. No other wildcard is accepted: `*@gmail.com` would name accounts that are not a
    /// project's service accounts, and `deploy-*@...` would let any account whose name an
    /// attacker can choose in that project match.
    pub(super) fn parse(entry: &str) -> Result<Self, String> {
        let shown = || entry.chars().take(80).collect::<String>();
        let lower = entry.to_ascii_lowercase();
        if lower.contains('*') {
            return match lower
                .strip_prefix("*@")
                .and_then(|domain| domain.strip_suffix(PROJECT_DOMAIN_SUFFIX))
            {
                Some(project) if is_project_id(project) => Ok(Self::Project(project.to_owned())),
                Some(_) => Err(format!(
                    "{:?}: the part before .iam.gserviceaccount.com is not a project id (6 to 30 lowercase letters, digits and hyphens, starting with a letter, not ending with a hyphen)",
                    shown()
                )),
                None => Err(format!(
                    "{:?}: the only wildcard allowed is every service account of one project, written *@PROJECT.iam.gserviceaccount.com",
                    shown()
                )),
            };
        }
        if is_email(&lower) {
            Ok(Self::Email(lower))
        } else {
            Err(format!(
                "{:?} is not a service-account email such as deployer@my-project.iam.gserviceaccount.com (or *@my-project.iam.gserviceaccount.com for every account of a project)",
                shown()
            ))
        }
    }

    /// Whether `email` (as a request names it) is this account, or an account of this project.
    pub fn matches(&self, email: &str) -> bool {
        match self {
            Self::Email(expected) => expected.eq_ignore_ascii_case(email),
            Self::Project(project) => email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.len() == project.len() + PROJECT_DOMAIN_SUFFIX.len()
                    && domain[..project.len()].eq_ignore_ascii_case(project)
                    && domain[project.len()..].eq_ignore_ascii_case(PROJECT_DOMAIN_SUFFIX)
            }),
        }
    }
}

impl fmt::Display for ServiceAccountPattern {
    /// As written in a policy: the email, or `*@PROJECT.iam.gserviceaccount.com`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Email(email) => f.write_str(email),
            Self::Project(project) => write!(f, "*@{project}{PROJECT_DOMAIN_SUFFIX}"),
        }
    }
}

/// A Google Cloud project id: 6 to 30 lowercase letters, digits and hyphens, starting with a
/// letter and not ending with a hyphen.
fn is_project_id(id: &str) -> bool {
    (6..=30).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A lowercase email address as service accounts have them: a local part of 1 to 64 letters,
/// digits, '.', '_', '-' and '+', '@', and a DNS name with at least two labels; at most 254
/// bytes in all.
fn is_email(email: &str) -> bool {
    email.len() <= MAX_EMAIL_LEN
        && email.split_once('@').is_some_and(|(local, domain)| {
            (1..=64).contains(&local.len())
                && local.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'.' | b'_' | b'-' | b'+')
                })
                && domain.contains('.')
                && super::load::is_dns_name(domain)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_match() {
        let project = ServiceAccountPattern::parse("*@My-Project.iam.gserviceaccount.com")
            .expect("project wildcard");
        assert_eq!(project, ServiceAccountPattern::Project("my-project".into()));
        assert_eq!(project.to_string(), "*@my-project.iam.gserviceaccount.com");
        for (email, expected) in [
            ("a@my-project.iam.gserviceaccount.com", true),
            ("Deployer@MY-PROJECT.iam.gserviceaccount.com", true),
            ("@my-project.iam.gserviceaccount.com", false),
            ("a@my-project2.iam.gserviceaccount.com", false),
            ("a@xmy-project.iam.gserviceaccount.com", false),
            ("a@evil.my-project.iam.gserviceaccount.com", false),
            ("a@my-project.iam.gserviceaccount.com.evil.net", false),
            ("a@b@my-project.iam.gserviceaccount.com", false),
            ("my-project@appspot.gserviceaccount.com", false),
            ("a@my-project.iam.gserviceaccount.co", false),
        ] {
            assert_eq!(project.matches(email), expected, "{email}");
        }

        let exact = ServiceAccountPattern::parse("Deployer@P-123456.iam.gserviceaccount.com")
            .expect("email");
        assert_eq!(
            exact,
            ServiceAccountPattern::Email("deployer@p-123456.iam.gserviceaccount.com".into())
        );
        assert!(exact.matches("DEPLOYER@p-123456.iam.gserviceaccount.com"));
        assert!(!exact.matches("deployer2@p-123456.iam.gserviceaccount.com"));
        assert!(!exact.matches("other@p-123456.iam.gserviceaccount.com"));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "",
            "deployer",
            "@p-123456.iam.gserviceaccount.com",
            "a@",
            "a@localhost",
            "a b@p-123456.iam.gserviceaccount.com",
            "a@@p-123456.iam.gserviceaccount.com",
            "*",
            "*@gmail.com",
            "a*@p-123456.iam.gserviceaccount.com",
            "*@*.iam.gserviceaccount.com",
            "*@p.iam.gserviceaccount.com",
            "*@1project.iam.gserviceaccount.com",
            "*@project-.iam.gserviceaccount.com",
            "*@project_x.iam.gserviceaccount.com",
            "*@abcdefghijabcdefghijabcdefghijk.iam.gserviceaccount.com",
            "*@my-project.iam.gserviceaccount.com.evil.net",
        ] {
            assert!(ServiceAccountPattern::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@p-123456.iam.gserviceaccount.com", "a".repeat(65));
        assert!(ServiceAccountPattern::parse(&long).is_err());
    }
}
