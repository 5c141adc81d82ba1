//! `write-api`: the write side as its own process. All the work is in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    write_api::main().await
}
