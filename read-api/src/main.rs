//! `read-api`: the read side as its own process. All the work is in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    read_api::main().await
}
