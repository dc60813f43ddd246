//! Generates the envd message types, service traits and clients from the
//! `.proto` files with `connectrpc-build`.
//!
//! The `.proto` files are compiled to a descriptor set by `protox`, a
//! protobuf compiler written in Rust that carries Google's well-known types
//! (`google/protobuf/timestamp.proto` and the like): building Hutch needs
//! neither `protoc` nor protobuf headers on the system.

use std::path::PathBuf;

const PROTO_ROOT: &str = "proto";
const FILES: [&str; 2] = ["process/process.proto", "filesystem/filesystem.proto"];

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let descriptors = protox::Compiler::new([PROTO_ROOT])
        .and_then(|mut compiler| {
            compiler.include_imports(true).include_source_info(true);
            compiler.open_files(FILES)?;
            Ok(compiler.encode_file_descriptor_set())
        })
        .unwrap_or_else(|e| panic!("compiling the envd .proto files: {e:?}"));
    let set = out_dir.join("envd-descriptors.bin");
    std::fs::write(&set, descriptors).expect("writing the envd descriptor set");
    for file in FILES {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{file}");
    }

    connectrpc_build::Config::new()
        .descriptor_set(set)
        .files(&FILES)
        .include_file("_connectrpc.rs")
        .compile()
        .expect("generating envd protocol code");
}
