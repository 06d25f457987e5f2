//! Generates the gRPC code for `proto/` and, for each app, the descriptor set its server
//! reflection serves (each app describes its own service only).
//!
//! protoc comes from the `protoc-bin-vendored` crate unless `PROTOC` names another one, so a
//! build needs nothing installed beyond cargo.

use std::{env, error::Error, path::PathBuf};

const PROTOS: [&str; 2] = [
    "proto/task/v1/task.proto",
    "proto/notification/v1/notification.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    config.protoc_executable(&protoc);
    let well_known_types = protoc_bin_vendored::include_path()?;

    let includes = [PathBuf::from("proto"), well_known_types];
    // Undecodable requests are the caller's mistake: see src/proto/codec.rs.
    tonic_prost_build::configure()
        .codec_path("crate::proto::codec::CallerCodec")
        .compile_with_config(config, &PROTOS.map(PathBuf::from), &includes)?;
    // One descriptor set per app, for its reflection service.
    for (proto, name) in PROTOS
        .iter()
        .zip(["task_descriptors", "notification_descriptors"])
    {
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(&protoc);
        config.file_descriptor_set_path(out_dir.join(format!("{name}.bin")));
        config.out_dir(out_dir.join(name));
        std::fs::create_dir_all(out_dir.join(name))?;
        config.compile_protos(&[PathBuf::from(proto)], &includes)?;
    }

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
