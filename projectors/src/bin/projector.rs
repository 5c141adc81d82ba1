//! `projector`: a projection worker process. All the work is in `projectors::worker`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    projectors::worker::main().await
}
