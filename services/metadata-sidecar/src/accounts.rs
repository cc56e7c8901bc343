//! The service accounts the sidecar serves: found by `default` or by email, with the scopes
//! and audiences the configuration lets clients ask for.

use std::sync::Arc;

use broker_core::ScopeSet;

use crate::config::{Settings, SettingsError};

/// One configured account.
#[derive(Debug)]
pub(crate) struct Account {
    /// Its email.
    pub(crate) email: String,
    /// The broker credential its tokens are asked for; `None`: the caller's default grant.
    pub(crate) credential: Option<String>,
    /// Whether `default` names it.
    pub(crate) is_default: bool,
    /// Its scopes: listed by `scopes`, and what a token request without `scopes=` gets.
    pub(crate) scopes: ScopeSet,
    /// Other scopes a token request may ask for; `None`: any.
    allowed_scopes: Option<ScopeSet>,
    /// Audiences an identity request may ask for; `None`: any.
    allowed_audiences: Option<Vec<String>>,
}

impl Account {
    /// Whether a token request may ask for `scope` (the broker's policy still decides).
    pub(crate) fn allows_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
            || self
                .allowed_scopes
                .as_ref()
                .is_none_or(|allowed| allowed.contains(scope))
    }

    /// Whether an identity request may ask for `audience` (the broker's policy still
    /// decides).
    pub(crate) fn allows_audience(&self, audience: &str) -> bool {
        self.allowed_audiences
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|a| a == audience))
    }
}

/// Every configured account; cloning is cheap.
#[derive(Debug, Clone)]
pub(crate) struct Accounts(Arc<[Account]>);

impl Accounts {
    /// The accounts of validated `settings`.
    pub(crate) fn new(settings: &Settings) -> Result<Self, SettingsError> {
        let invalid = |problem: String| SettingsError::Invalid(vec![problem]);
        let default = settings.default_account().ok_or_else(|| {
            invalid("service_accounts: exactly one account must have default = true".to_owned())
        })?;
        let mut accounts = Vec::with_capacity(settings.service_accounts.len());
        for (i, account) in settings.service_accounts.iter().enumerate() {
            let scopes = ScopeSet::parse(&account.scopes)
                .map_err(|e| invalid(format!("service_accounts[{i}].{e}")))?;
            let allowed_scopes = account
                .allowed_scopes
                .as_ref()
                .map(ScopeSet::parse)
                .transpose()
                .map_err(|e| invalid(format!("service_accounts[{i}].allowed_{e}")))?;
            accounts.push(Account {
                email: account.email.clone(),
                credential: account.credential.clone(),
                is_default: i == default,
                scopes,
                allowed_scopes,
                allowed_audiences: account.allowed_audiences.clone(),
            });
        }
        Ok(Self(accounts.into()))
    }

    /// The account `name` names: `default`, or an email (ASCII case ignored).
    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        if name == "default" {
            return Some(self.default_index());
        }
        self.0
            .iter()
            .position(|account| account.email.eq_ignore_ascii_case(name))
    }

    /// The index of the default account.
    pub(crate) fn default_index(&self) -> usize {
        self.0
            .iter()
            .position(|account| account.is_default)
            .unwrap_or_default()
    }

    /// The account at `index` (from [`find`](Self::find) or a cache key).
    pub(crate) fn get(&self, index: usize) -> Option<&Account> {
        self.0.get(index)
    }

    /// Every account, in configuration order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Account> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BrokerSettings, ProjectSettings, ServiceAccountSettings};

    #[test]
    fn accounts_are_found_by_default_and_by_email() {
        let settings = Settings::new(
            BrokerSettings::new(
                "https://broker:8443",
                broker_client::TlsFiles {
                    ca: "ca".into(),
                    cert: "c".into(),
                    key: "k".into(),
                },
            ),
            ProjectSettings::new("p", "1"),
            vec![
                ServiceAccountSettings {
                    allowed_scopes: Some(vec![
                        "https://www.googleapis.com/auth/devstorage.read_only".to_owned(),
                    ]),
                    allowed_audiences: Some(vec!["https://a.example.com".to_owned()]),
                    ..ServiceAccountSettings::new("one@p.iam.gserviceaccount.com")
                },
                ServiceAccountSettings {
                    default: true,
                    ..ServiceAccountSettings::new("two@p.iam.gserviceaccount.com")
                },
            ],
        );
        let accounts = Accounts::new(&settings).expect("valid");
        assert_eq!(accounts.find("default"), Some(1));
        assert_eq!(accounts.find("ONE@p.iam.gserviceaccount.com"), Some(0));
        assert_eq!(accounts.find("three@p.iam.gserviceaccount.com"), None);
        let one = accounts.get(0).expect("one");
        assert!(one.allows_scope("https://www.googleapis.com/auth/cloud-platform"));
        assert!(one.allows_scope("https://www.googleapis.com/auth/devstorage.read_only"));
        assert!(!one.allows_scope("https://www.googleapis.com/auth/devstorage.full_control"));
        assert!(one.allows_audience("https://a.example.com"));
        assert!(!one.allows_audience("https://b.example.com"));
        let two = accounts.get(1).expect("two");
        assert!(two.allows_scope("https://www.googleapis.com/auth/anything"));
        assert!(two.allows_audience("https://b.example.com"));
    }
}
