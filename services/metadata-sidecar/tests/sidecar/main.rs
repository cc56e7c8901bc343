//! The sidecar end to end, from real parts on 127.0.0.1: the emulator of Google, a real broker
//! over mutual TLS, and the sidecar in front of it, asked over HTTP as Google's clients ask.

mod binary;
mod common;
mod google_cloud_auth;
mod logs;
mod protocol;
mod resilience;
mod tokens;
