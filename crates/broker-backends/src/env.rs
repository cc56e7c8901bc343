//! The environment variables the backends read, through a value that tests replace: nothing
//! in this crate reads the process environment except through [`Env::process`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// `GOOGLE_APPLICATION_CREDENTIALS`: the path of a credential file (Application Default
/// Credentials, step 1).
pub const GOOGLE_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// `CLOUDSDK_CONFIG`: gcloud's configuration directory (Application Default Credentials,
/// step 2).
pub const CLOUDSDK_CONFIG: &str = "CLOUDSDK_CONFIG";
/// `HOME`: the user's home directory, where gcloud's configuration lives by default.
pub const HOME: &str = "HOME";
/// `GCE_METADATA_HOST`: `host[:port]` of the metadata server, replacing its default address.
pub const GCE_METADATA_HOST: &str = "GCE_METADATA_HOST";
/// `NO_GCE_CHECK`: `true` skips the metadata server in Application Default Credentials.
pub const NO_GCE_CHECK: &str = "NO_GCE_CHECK";

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Where environment variables come from: the process environment in production
/// ([`Env::process`]), a fixed set in tests ([`Env::from_vars`]), so that no test has to
/// mutate the environment of its process. Cloning is cheap.
///
/// A variable set to the empty string counts as unset, as in Google's client libraries.
#[derive(Clone)]
pub struct Env {
    lookup: Arc<Lookup>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::process()
    }
}

impl Env {
    /// The process environment, read at each lookup. A value that is not valid Unicode is
    /// read lossily.
    pub fn process() -> Self {
        Self::from_fn(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Exactly these variables, and no others.
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(name, value)| (name.into(), value.into()))
            .collect();
        Self::from_fn(move |name| vars.get(name).cloned())
    }

    /// Variables looked up by `lookup`.
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            lookup: Arc::new(lookup),
        }
    }

    /// The value of `name`; `None` when it is unset or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_count_as_unset() {
        let env = Env::from_vars([("A", "1"), ("B", "")]);
        assert_eq!(env.get("A").as_deref(), Some("1"));
        assert_eq!(env.get("B"), None);
        assert_eq!(env.get("C"), None);
        assert_eq!(format!("{env:?}"), "Env { .. }");
    }
}
