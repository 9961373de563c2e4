//! `make oci`: writes target/oci/flowguard, an OCI image layout of target/flowguard.wasm.
fn main() {
    let root = flowguard_integration::envoy::repo_root();
    let wasm = match std::fs::read(root.join("target/flowguard.wasm")) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("target/flowguard.wasm: {e} (run `make build` first)");
            std::process::exit(1);
        }
    };
    let dir = root.join("target/oci/flowguard");
    match flowguard_integration::oci::build(&wasm, &dir, "0.1.0") {
        Ok(digest) => println!("OCI image layout {} (manifest {digest}); push with: skopeo copy oci:{}:0.1.0 docker://REGISTRY/flowguard:0.1.0", dir.display(), dir.display()),
        Err(e) => {
            eprintln!("cannot write {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}
