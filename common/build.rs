//! Generates the `pairdb` wire types and service stubs from `proto/` with a vendored `protoc`,
//! so a fresh machine needs no system protobuf compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = ["types.proto", "storage.proto", "coordinator.proto"]
        .map(|f| proto_root.join("pairdb/v1").join(f));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Streamed records decode as slices of the received buffer instead of one copy each.
    config.bytes([".pairdb.StreamEntry.key", ".pairdb.StreamEntry.record"]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("pairdb_descriptor.bin"))
        .compile_with_config(config, &files, &[proto_root])?;
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
