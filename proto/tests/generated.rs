//! The generated code in `src/flowguard.v1.rs` is what `flowguard/v1/*.proto` compiles to.
//!
//! It is checked in so that no build (the Wasm filter, the fuzz targets, release images)
//! compiles the protobuf compiler; this test regenerates it and fails on any difference.
//! After editing a `.proto`: `FLOWGUARD_REGENERATE=1 cargo test -p flowguard-proto --test generated`.

use std::path::{Path, PathBuf};

const FILES: [&str; 3] = [
    "flowguard/v1/telemetry.proto",
    "flowguard/v1/policy.proto",
    "flowguard/v1/sessions.proto",
];

/// Messages and the tonic services in one file; the services only with the `grpc` feature
/// (the filter needs the messages alone).
fn generate(out: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(FILES.map(|f| root.join(f)), [root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .out_dir(out)
        .compile_fds(fds)?;
    let code = std::fs::read_to_string(out.join("flowguard.v1.rs"))?;
    Ok(code
        .lines()
        .map(|line| {
            let service = line
                .strip_prefix("pub mod ")
                .is_some_and(|m| m.ends_with("_client {") || m.ends_with("_server {"));
            if service {
                format!("#[cfg(feature = \"grpc\")]\n{line}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect())
}

#[test]
fn checked_in_code_matches_the_proto_files() {
    let out: PathBuf = std::env::temp_dir().join(format!("flowguard-proto-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let fresh = generate(&out).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/flowguard.v1.rs");
    if std::env::var_os("FLOWGUARD_REGENERATE").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        fresh.contains("#[cfg(feature = \"grpc\")]\npub mod telemetry_server {"),
        "the services are gated"
    );
    assert!(
        checked_in == fresh,
        "{} is stale: run FLOWGUARD_REGENERATE=1 cargo test -p flowguard-proto --test generated",
        path.display()
    );
}
