//! `replay`: rebuilds projections blue/green from the event store (`--projection NAME` or
//! `--all`), with a progress bar. All the work is in `projectors::replay`.

// mimalloc: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

/// Rebuild projections from the event store into a shadow copy, catch up with live writes,
/// then swap the copy in atomically. Safe while writes continue and projectors run.
#[derive(Parser)]
#[command(name = "replay", version)]
struct Cli {
    #[command(flatten)]
    args: projectors::replay::ReplayArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("replay: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(projectors::replay::main(cli.args))
}
