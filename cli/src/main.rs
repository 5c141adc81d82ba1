//! `quintet`: the command line. Thin: each command calls into the libraries.

// mimalloc: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use kernel::config::Settings;
use web::server::{bind, process_main, Shutdown};
use web::{JwtKeys, Role};

#[derive(Parser)]
#[command(
    name = "quintet",
    version,
    about = "Quintet: an event-sourced CQRS kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: write API on 8080, read API on 8081, projections and
    /// the event stream in-process. Embedded default: SQLite under data_dir, no servers.
    Up,
    /// Create the database if needed and run the event-store and read-store migrations.
    Migrate,
    /// Mint a JWT from the configured secret and print it.
    Token {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The token's subject.
        #[arg(long, default_value = "quintet-cli")]
        subject: String,
        /// How long the token is valid, e.g. 15m or 24h (default: security.token_expiry).
        #[arg(long, value_parser = humantime_duration)]
        ttl: Option<Duration>,
        /// The repository user the token acts for: it then reads and writes only that
        /// user's own users, payments and orders (admins are never restricted).
        #[arg(long)]
        user_id: Option<String>,
    },
    /// Write both OpenAPI specs into a directory.
    Openapi {
        #[arg(long, default_value = "openapi")]
        dir: PathBuf,
    },
    /// Crypto-shred an aggregate id: delete its data keys, purge snapshots, tombstone read models.
    Forget { aggregate_id: String },
    /// Rebuild projections from the event store into a shadow copy, catch up with live
    /// writes, then swap it in atomically (as the `replay` binary does).
    Replay(projectors::replay::ReplayArgs),
    /// Run the write API as its own process, exactly as the `write-api` binary does.
    WriteApi,
    /// Run the read API as its own process, exactly as the `read-api` binary does.
    ReadApi,
    /// Run a projection worker, exactly as the `projector` binary does.
    Projector(projectors::worker::Args),
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    kernel::config::parse_duration(text)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("quintet: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The process commands: one binary can run every process of the distributed topology.
    let command = match cli.command {
        Command::WriteApi => return runtime.block_on(write_api::main()),
        Command::ReadApi => return runtime.block_on(read_api::main()),
        Command::Projector(args) => return runtime.block_on(projectors::worker::main_with(args)),
        command => command,
    };
    runtime.block_on(process_main("quintet", |settings, shutdown| async move {
        match command {
            Command::Up => up(settings, shutdown).await,
            Command::Migrate => migrate(&settings).await,
            Command::Token {
                role,
                subject,
                ttl,
                user_id,
            } => {
                let ttl = ttl.unwrap_or(settings.security.token_expiry);
                let keys = JwtKeys::new(&settings.security);
                let mut claims = keys.claims(&subject, role, ttl);
                claims.user_id = user_id;
                let token = keys.mint_claims(&claims).map_err(|err| err.to_string())?;
                println!("{token}");
                Ok(())
            }
            Command::Openapi { dir } => openapi(&dir).await,
            Command::Forget { aggregate_id } => forget(&settings, &aggregate_id).await,
            Command::Replay(args) => projectors::replay::run(&settings, &args, shutdown.wait())
                .await
                .map(|_| ()),
            // Matched above: each runs its own process_main.
            Command::WriteApi | Command::ReadApi | Command::Projector(_) => {
                Err("a process command reached the CLI's own process_main".into())
            }
        }
    }))
}

async fn up(settings: Settings, shutdown: Shutdown) -> Result<(), String> {
    let (backends, read_state) = read_api::connect_and_start(&settings, shutdown.clone())
        .await
        .map_err(|err| err.to_string())?;
    let write_listener = bind(&settings.write_api.addr()).map_err(|err| err.to_string())?;
    let read_listener = bind(&settings.read_api.addr()).map_err(|err| err.to_string())?;
    tracing::info!(
        write = %settings.write_api.addr(),
        read = %settings.read_api.addr(),
        data_dir = %settings.data_dir.display(),
        "quintet up: write API, read API, projections and event stream running"
    );
    eprintln!(
        "quintet up: write API http://{0}/docs · read API http://{1}/docs · events ws://{1}/ws · data in {2}",
        settings.write_api.addr(),
        settings.read_api.addr(),
        settings.data_dir.display()
    );
    let write = write_api::serve(&settings, &backends, write_listener, shutdown.clone());
    let read = read_api::serve(&settings, read_state, read_listener, shutdown);
    let (write, read) = tokio::join!(write, read);
    write.and(read).map_err(|err| err.to_string())
}

async fn migrate(settings: &Settings) -> Result<(), String> {
    kernel::wiring::connect_write_side(settings)
        .await
        .map_err(|err| err.to_string())?;
    kernel::wiring::connect_read_store(settings)
        .await
        .map_err(|err| err.to_string())?;
    println!(
        "migrations applied ({})",
        settings.event_store_url_redacted()
    );
    Ok(())
}

async fn forget(settings: &Settings, aggregate_id: &str) -> Result<(), String> {
    let backends = kernel::wiring::connect_write_side(settings)
        .await
        .map_err(|err| err.to_string())?;
    let forgotten = backends
        .engine
        .forget(aggregate_id, "quintet-cli")
        .await
        .map_err(|err| err.to_string())?;
    if forgotten.is_empty() {
        return Err(format!("no data keys found for `{aggregate_id}`"));
    }
    for key_id in forgotten {
        println!("forgotten: {key_id}");
    }
    Ok(())
}

/// Builds both APIs on a throwaway embedded stack and writes their specs.
async fn openapi(dir: &std::path::Path) -> Result<(), String> {
    let specs = quintet_specs().await?;
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    for (file, spec) in specs {
        let path = dir.join(file);
        std::fs::write(&path, spec).map_err(|err| format!("{}: {err}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn quintet_specs() -> Result<Vec<(&'static str, String)>, String> {
    let scratch = std::env::temp_dir().join(format!("quintet-openapi-{}", std::process::id()));
    let result = async {
        let settings = Settings::embedded_at(&scratch).map_err(|err| err.to_string())?;
        let (_stop, shutdown) = web::server::shutdown_channel();
        let (backends, read_state) = read_api::connect_and_start(&settings, shutdown)
            .await
            .map_err(|err| err.to_string())?;
        let write_state = write_api::WriteState::new(backends.engine.clone(), &settings);
        Ok(vec![
            (
                "write-api.json",
                web::server::spec_json(&write_api::openapi(write_state)),
            ),
            (
                "read-api.json",
                web::server::spec_json(&read_api::openapi(read_state)),
            ),
        ])
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_subcommands_take_their_binaries_arguments() {
        let cli = Cli::try_parse_from(["quintet", "projector", "--projection", "memento"])
            .expect("quintet projector");
        match cli.command {
            Command::Projector(args) => assert_eq!(args.projections, ["memento"]),
            _ => panic!("not the projector command"),
        }
        assert!(matches!(
            Cli::try_parse_from(["quintet", "write-api"]).map(|cli| cli.command),
            Ok(Command::WriteApi)
        ));
        assert!(matches!(
            Cli::try_parse_from(["quintet", "read-api"]).map(|cli| cli.command),
            Ok(Command::ReadApi)
        ));
        assert!(Cli::try_parse_from(["quintet", "write-api", "--projection", "x"]).is_err());
    }
}
