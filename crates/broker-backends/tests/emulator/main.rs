//! The backends against the real emulator (`services/gcp-emulator`) over HTTP on 127.0.0.1:
//! the emulator is the oracle, and `tokeninfo` (or an ID token's claims, or a signature
//! checked against the account's published certificate) says what Google really minted.
//! One module per flow; every test talks only to loopback (metadata URLs always point at the
//! emulator or a closed loopback port, never at a real metadata server).

mod adc;
mod authorized_user;
mod external_account;
mod iam;
mod impersonated;
mod metadata;
mod secrets;
mod service_account;
mod support;
