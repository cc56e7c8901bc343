//! Compiles `proto/tokenbroker/v1/*.proto` with protox (pure Rust, no system `protoc`), writes the
//! encoded `FileDescriptorSet` to `OUT_DIR` for gRPC reflection, and generates the prost messages
//! and the tonic client and server with tonic-prost-build.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

/// The proto files of the public API, relative to the include directory.
const PROTOS: &[&str] = &[
    "tokenbroker/v1/token_broker.proto",
    "tokenbroker/v1/access_boundary.proto",
    "tokenbroker/v1/error_reason.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // The compile_fds path emits no rerun-if-changed lines of its own. A directory makes cargo
    // rerun the script when any file below it changes (including new files).
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    // protox::compile keeps source info (so proto comments become rustdoc) and includes the
    // imported files (google/protobuf/*.proto), which reflection clients need.
    let fds = protox::compile(PROTOS, [&proto_dir])?;

    fs::write(
        out_dir.join("tokenbroker_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect()` helpers that would need tonic's `transport` feature here; the generated
        // client and server still work with tonic's transport (`Channel`, `Server`) in the crates
        // that enable it.
        .build_transport(false)
        .compile_fds(fds)?;

    Ok(())
}
