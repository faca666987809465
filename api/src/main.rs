//! The `depot` binary: `depot serve` (the HTTP API), `depot log verify`, `depot log inspect`,
//! `depot snapshot`, `depot sim`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use depot_api::cli::{self, ToolError};
use depot_wal::WalError;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: the server allocates and frees many small,
/// short-lived buffers per request on several threads, where glibc's malloc spends a fifth of
/// the CPU (consolidating and locking its arenas).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "depot", version, about = "depot, an inventory engine")]
struct Args {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Run the HTTP server (API.md): recover the data directory, then serve until SIGTERM.
    Serve(depot_api::server::config::ServeArgs),
    /// Tools for the write-ahead log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Take a snapshot now, offline: recover the state from the log in DIR (from its newest
    /// snapshot) and write it there as a new snapshot file; prints its name and seq.
    Snapshot { dir: PathBuf },
    /// The simulator: load from scenario files, log replay (what-if rules), deterministic
    /// simulation testing.
    Sim(depot_sim::cli::SimArgs),
    /// The crash test's load generator: runs on the log in DIR until killed, printing every
    /// acknowledged write to stdout.
    #[command(hide = true)]
    CrashChild { dir: PathBuf, seed: u64 },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Read every segment and record of the log in DIR and summarise it. Exits 1 on corruption.
    Verify { dir: PathBuf },
    /// Print the log's entries as JSON lines, one per entry.
    Inspect {
        dir: PathBuf,
        /// Only entries whose command names this SKU (its sku, lines, components).
        #[arg(long)]
        sku: Option<String>,
        /// Only entries with seq >= FROM.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        from: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(&args);
    match run(args) {
        Ok(code) => code,
        // `depot log inspect ... | head`: the reader went away; not an error of ours.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("depot: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG (default: `info` for the server, `warn` for the tools;
/// for `sim dst`, whose storage faults are injected on purpose, without the log's own warnings
/// about them); the server's as text or JSON lines (`--log-format`).
fn init_logs(args: &Args) {
    use depot_api::server::config::LogFormat;
    use depot_sim::cli::SimCommand;
    let (default, format) = match &args.command {
        Top::Serve(s) => ("info", s.log_format),
        Top::Sim(s) if matches!(s.command, SimCommand::Dst { .. }) => {
            (DST_LOG_FILTER, LogFormat::Pretty)
        }
        _ => ("warn", LogFormat::Pretty),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Pretty => logs.init(),
    }
}

/// `sim dst`'s default log filter: every torn write, failed fsync and full disk it injects
/// makes the log warn or stop with an error, thousands of lines per minute that say nothing
/// the simulation's own verdict does not (`RUST_LOG=warn` shows them).
const DST_LOG_FILTER: &str = "warn,depot_wal=off";

/// Corruption is reported as the log's own error (file and byte offset) with exit code 1.
fn tool_error(e: ToolError) -> anyhow::Error {
    match &e {
        ToolError::Wal(WalError::Corrupt { file, offset, .. }) => {
            tracing::error!(file, offset, "the log is corrupt");
            anyhow::Error::new(e).context("log verification failed")
        }
        _ => anyhow::Error::new(e),
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Top::Serve(serve) => {
            let config = match serve.validate() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("depot serve: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            depot_api::pretouch::prepare(config.pretouch_mib);
            depot_api::server::serve(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Top::Log(LogCommand::Verify { dir }) => {
            let mut progress = cli::Progress::new("verifying", cli::estimate_entries(&dir, 0));
            let summary = cli::verify(&dir, |_| progress.entry()).map_err(tool_error)?;
            progress.finish();
            println!("log {}", dir.display());
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Top::Log(LogCommand::Inspect { dir, sku, from }) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            // A bar only when the entries go to a file or a pipe, not to the same terminal.
            let mut progress = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                cli::Progress::hidden()
            } else {
                cli::Progress::new("inspecting", cli::estimate_entries(&dir, 0))
            };
            let (written, tail) =
                cli::inspect(&dir, sku.as_deref(), from, &mut out, |_| progress.entry())
                    .map_err(tool_error)?;
            out.flush().context("writing output")?;
            progress.finish();
            tracing::info!(written, ?tail, "inspected");
            Ok(ExitCode::SUCCESS)
        }
        Top::Snapshot { dir } => {
            let mut progress = cli::Progress::new(
                "replaying",
                cli::estimate_entries(&dir, cli::replay_start(&dir)),
            );
            let written = cli::snapshot(&dir, |_| progress.entry()).map_err(tool_error)?;
            progress.finish();
            println!("{written}");
            Ok(ExitCode::SUCCESS)
        }
        Top::Sim(sim) => depot_sim::cli::run(sim),
        Top::CrashChild { dir, seed } => {
            cli::crash_child(&dir, seed).map_err(tool_error)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
