//! Generates the prost types from `proto/` with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // prost-build emits no rerun-if-changed of its own.
    println!("cargo:rerun-if-changed=../../proto");
    let files = [
        "switchboard/v1/backplane.proto",
        "switchboard/v1/client.proto",
    ];
    let descriptors = protox::compile(files, ["../../proto"])?;
    prost_build::Config::new()
        // `bytes` fields become `bytes::Bytes`: payloads are shared, not copied.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
