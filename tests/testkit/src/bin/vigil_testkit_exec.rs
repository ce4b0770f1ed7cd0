//! The testkit monitor as an exec monitor, through the SDK's `serve_stdio`:
//! proves that a Rust `Monitor` runs unchanged as a subprocess.
fn main() {
    std::process::exit(vigil_sdk::proto::serve_stdio::<vigil_testkit::Testkit>());
}
