//! Rebuild when the embedded conformance suites change (include_dir cannot tell cargo).
fn main() {
    println!("cargo:rerun-if-changed=../tests/conformance");
}
