//! The replay job behind the `replay` binary and `quintet replay`: rebuilds one projection or
//! all of them with `kernel::replay` (blue/green, safe under live writes and running
//! projectors), drawing a progress bar with rate and ETA on a terminal, and printing one
//! summary line per projection.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kernel::config::Settings;
use kernel::domain::projection::Projection;
use kernel::projector::Touched;
use kernel::replay::{Progress, Rebuild, Summary};

/// What to rebuild.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The projection to rebuild.
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub projection: Option<String>,
    /// Rebuild every projection, one after the other.
    #[arg(long)]
    pub all: bool,
    /// No progress bar; only the summary lines.
    #[arg(long)]
    pub quiet: bool,
}

/// The projections the arguments name.
pub fn selected(args: &ReplayArgs) -> Result<Vec<Arc<dyn Projection>>, String> {
    if args.all {
        return Ok(crate::all());
    }
    let name = args.projection.as_deref().unwrap_or_default();
    crate::by_name(name)
        .map(|projection| vec![projection])
        .ok_or_else(|| {
            let known: Vec<&str> = crate::all().iter().map(|p| p.name()).collect();
            format!("unknown projection `{name}`; known: {}", known.join(", "))
        })
}

fn progress_bar(name: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} positions · {per_sec} · ETA {eta} · {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show(bar: &ProgressBar, progress: &Progress) {
    bar.set_length(progress.target.max(1));
    bar.set_position(progress.position.min(progress.target));
    bar.set_message(format!("{} events · {:?}", progress.events, progress.phase));
}

/// Rebuilds the selected projections one after the other; stops at the first failure. On
/// `shutdown`, the rebuild under way drops its shadow copy (the live one is untouched).
pub async fn run(
    settings: &Settings,
    args: &ReplayArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Vec<Summary>, String> {
    let projections = selected(args)?;
    let backends = kernel::wiring::connect_write_side(settings)
        .await
        .map_err(|err| err.to_string())?;
    let read = kernel::wiring::connect_read_store(settings)
        .await
        .map_err(|err| err.to_string())?;
    tokio::pin!(shutdown);
    let mut summaries = Vec::new();
    for projection in projections {
        let name = projection.name();
        let swapped = Touched::all_of(&*projection);
        let rebuild = Rebuild::begin(
            backends.engine.clone(),
            read.clone(),
            projection,
            settings.feed.clone(),
        )
        .await
        .map_err(|err| format!("{name}: {err}"))?;
        let generation = rebuild.generation();
        let bar = progress_bar(name, args.quiet);
        let shown = bar.clone();
        let outcome = tokio::select! {
            outcome = rebuild.run(move |progress| show(&shown, progress)) => outcome,
            _ = &mut shutdown => {
                bar.abandon_with_message("interrupted");
                if let Err(err) = read.abandon_generation(name, generation).await {
                    tracing::warn!(projection = name, error = %err, "shadow copy not dropped");
                }
                return Err(format!("{name}: interrupted; the live copy is unchanged"));
            }
        };
        bar.finish_and_clear();
        let summary = outcome.map_err(|err| format!("{name}: {err}"))?;
        // The read API may cache documents of the copy that was just swapped out.
        match kernel::wiring::connect_read_cache(settings).await {
            Ok(cache) => swapped.invalidate(&*cache).await,
            Err(err) => tracing::warn!(error = %err, "read cache not invalidated"),
        }
        println!("{summary}");
        summaries.push(summary);
    }
    Ok(summaries)
}

/// The `replay` process: configuration, logging and signals as in every Quintet process.
pub async fn main(args: ReplayArgs) -> std::process::ExitCode {
    web::server::process_main("replay", |settings, shutdown| async move {
        run(&settings, &args, shutdown.wait()).await.map(|_| ())
    })
    .await
}
