//! Compiles the gRPC API (`proto/twinreg/v1/registry.proto`) into server and client code, and a
//! file descriptor set for server reflection. protoc must be on PATH (or in `PROTOC`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto/twinreg/v1/registry.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out.join("twinreg_v1_descriptor.bin"))
        .compile_protos(&["proto/twinreg/v1/registry.proto"], &["proto"])?;
    Ok(())
}
