//! The RPCs a grant can allow.

use std::fmt;
use std::str::FromStr;

/// An RPC of `tokenbroker.v1.TokenBroker`, named in a grant's `rpcs` by its proto method name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rpc {
    /// `GetAccessToken`.
    GetAccessToken,
    /// `ExchangeToken`.
    ExchangeToken,
    /// `ImpersonateServiceAccount`.
    ImpersonateServiceAccount,
    /// `GenerateIdToken`.
    GenerateIdToken,
    /// `SignJwt`.
    SignJwt,
    /// `SignBlob`.
    SignBlob,
}

impl Rpc {
    /// Every RPC, in proto order.
    pub const ALL: [Rpc; 6] = [
        Rpc::GetAccessToken,
        Rpc::ExchangeToken,
        Rpc::ImpersonateServiceAccount,
        Rpc::GenerateIdToken,
        Rpc::SignJwt,
        Rpc::SignBlob,
    ];

    /// The proto method name, as written in policies, denials and audit events.
    pub fn name(self) -> &'static str {
        match self {
            Self::GetAccessToken => "GetAccessToken",
            Self::ExchangeToken => "ExchangeToken",
            Self::ImpersonateServiceAccount => "ImpersonateServiceAccount",
            Self::GenerateIdToken => "GenerateIdToken",
            Self::SignJwt => "SignJwt",
            Self::SignBlob => "SignBlob",
        }
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that names no RPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an RPC of tokenbroker.v1.TokenBroker (GetAccessToken, ExchangeToken, ImpersonateServiceAccount, GenerateIdToken, SignJwt or SignBlob)"
)]
pub struct RpcParseError(String);

impl FromStr for Rpc {
    type Err = RpcParseError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|rpc| rpc.name() == name)
            .ok_or_else(|| RpcParseError(name.chars().take(80).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        for rpc in Rpc::ALL {
            assert_eq!(rpc.name().parse::<Rpc>(), Ok(rpc));
        }
        for bad in ["getAccessToken", "GetAccessToken ", "", "Exchange"] {
            assert!(bad.parse::<Rpc>().is_err(), "{bad}");
        }
    }
}
