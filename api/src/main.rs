//! The `depot` binary: `depot log verify`, `depot log inspect`, and (later) `depot serve`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use depot_api::cli::{self, ToolError};
use depot_wal::WalError;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "depot", version, about = "depot, an inventory engine")]
struct Args {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Run the HTTP server (not built yet).
    Serve,
    /// Tools for the write-ahead log.
    #[command(subcommand)]
    Log(LogCommand),
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
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
        Top::Serve => {
            eprintln!("depot serve: the HTTP server is not built yet (only `depot log` works)");
            Ok(ExitCode::from(2))
        }
        Top::Log(LogCommand::Verify { dir }) => {
            let summary = cli::verify(&dir, |_| {}).map_err(tool_error)?;
            println!("log {}", dir.display());
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Top::Log(LogCommand::Inspect { dir, sku, from }) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let (written, tail) =
                cli::inspect(&dir, sku.as_deref(), from, &mut out, |_| {}).map_err(tool_error)?;
            out.flush().context("writing output")?;
            tracing::info!(written, ?tail, "inspected");
            Ok(ExitCode::SUCCESS)
        }
        Top::CrashChild { dir, seed } => {
            cli::crash_child(&dir, seed).map_err(tool_error)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
