//! The token broker service: the mTLS gRPC server that hands short-lived Google tokens to
//! workloads, under a deny-by-default policy, from a shared cache.
//!
//! The binary (`token-broker`) is a thin layer over [`server::start`]; `token-broker dev`
//! ([`dev`]) runs everything on loopback against the embedded Google emulator.

#[cfg(feature = "dev")]
pub mod dev;
pub mod limits;
pub mod pki;
pub mod reload;
pub mod rpc;
pub mod server;
pub mod settings;
pub mod status;
pub mod tls;
pub mod transport;
