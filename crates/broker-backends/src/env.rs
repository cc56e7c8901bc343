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
/// `AWS_REGION`: the AWS region of an `aws` credential source (read before
/// `AWS_DEFAULT_REGION` and the metadata server).
pub const AWS_REGION: &str = "AWS_REGION";
/// `AWS_DEFAULT_REGION`: the AWS region when `AWS_REGION` is unset.
pub const AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
/// `AWS_ACCESS_KEY_ID`: the access key of an `aws` credential source (with
/// `AWS_SECRET_ACCESS_KEY`; otherwise the metadata server's role credentials are used).
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// `AWS_SECRET_ACCESS_KEY`: the secret of `AWS_ACCESS_KEY_ID`.
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// `AWS_SESSION_TOKEN`: the session token of temporary AWS credentials, optional.
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// `GOOGLE_API_CERTIFICATE_CONFIG`: the path of gcloud's `certificate_config.json`, for a
/// `certificate` credential source with `use_default_certificate_config`.
pub const GOOGLE_API_CERTIFICATE_CONFIG: &str = "GOOGLE_API_CERTIFICATE_CONFIG";

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
