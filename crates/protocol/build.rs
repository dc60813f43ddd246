//! Generates the envd message types, service traits and clients from the
//! `.proto` files with `connectrpc-build` (which runs `protoc`).

fn main() {
    connectrpc_build::Config::new()
        .files(&[
            "proto/process/process.proto",
            "proto/filesystem/filesystem.proto",
        ])
        .includes(&["proto/"])
        .include_file("_connectrpc.rs")
        .compile()
        .expect(
            "generating envd protocol code (is `protoc` installed? apt install protobuf-compiler)",
        );
}
