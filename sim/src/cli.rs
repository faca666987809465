//! `depot sim`: the command line of the simulator (the `depot` binary delegates here).

use crate::dst::{self, DstOptions, Faults};
use crate::generate::{self, GenerateOptions};
use crate::replay::{self, Speed};
use crate::report::Report;
use crate::scenario::Scenario;
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    #[command(subcommand)]
    pub command: SimCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SimCommand {
    /// Run a scenario file on simulated time through the engine, into a write-ahead log in
    /// OUT/wal, and write the report (OUT/report.html, OUT/report.md).
    Generate {
        /// The scenario (TOML; see sim/scenarios/README.md).
        #[arg(long, value_name = "FILE")]
        scenario: PathBuf,
        /// Output directory [default: sim-out/<scenario name>]; must not hold a log yet.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Override the scenario's duration_minutes.
        #[arg(long)]
        minutes: Option<u64>,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Replay a recorded log (a wal/ directory) at a chosen speed, in-process or against a
    /// running server, optionally under another rule document (what-if).
    Replay {
        /// The log directory, e.g. OUT/wal of `depot sim generate` or a server's DATA/wal.
        #[arg(long, value_name = "DIR")]
        log: PathBuf,
        /// `max`, or a factor of the recorded pace such as `10x` or `0.5x`.
        #[arg(long, default_value = "max")]
        speed: Speed,
        /// What-if: replace the log's rule documents by this one (JSON as for
        /// PUT /v1/allocation-rules, or TOML); the report puts both rule sets side by side.
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// `in-process`, or the base URL of a running `depot serve` (http://host:port).
        #[arg(long, default_value = "in-process")]
        target: String,
        /// API key for a URL target: an admin key of the tenant to load.
        #[arg(long, env = "DEPOT_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Output directory of the report [default: sim-out/replay, or sim-out/whatif].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Engine shards of an in-process replay (the state digest does not depend on it).
        #[arg(long, default_value_t = 2)]
        shards: usize,
    },
    /// Deterministic simulation testing: seeds N..N+K, each driving workload, clock, storage
    /// faults and crashes through the engine and the log, with invariants after every step.
    /// `--seeds 10000` is the soak.
    Dst {
        /// First seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How many seeds, from --seed on.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Steps per seed.
        #[arg(long, default_value_t = 400)]
        steps: u64,
        /// Faults to inject: a list of crash, torn, fsync, full, bitflip, clock; or all, none.
        #[arg(long, default_value = "all")]
        faults: Faults,
        /// Output directory of the report [default: sim-out/dst].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Runs `depot sim ...`. Exit code 1 when a run found an oversell or another invariant
/// violation, a replay did not reproduce its recorded state, or a DST seed failed.
pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SimCommand::Generate {
            scenario,
            out,
            minutes,
            seed,
        } => {
            let sc = Scenario::load(&scenario)?;
            let text = std::fs::read_to_string(&scenario)?;
            let out = out.unwrap_or_else(|| PathBuf::from("sim-out").join(&sc.name));
            let opts = GenerateOptions {
                out: out.clone(),
                minutes,
                seed,
                progress: true,
            };
            let g = generate::generate(&sc, &text, &opts)?;
            let report = Report {
                title: format!("depot simulation: {}", sc.name),
                facts: vec![
                    (
                        "scenario".into(),
                        format!("{} ({})", sc.name, scenario.display()),
                    ),
                    ("description".into(), sc.description.clone()),
                    ("seed".into(), seed.unwrap_or(sc.seed).to_string()),
                    (
                        "log".into(),
                        format!("{} ({} entries)", g.log_dir.display(), g.entries),
                    ),
                    (
                        "replay".into(),
                        format!("depot sim replay --log {}", g.log_dir.display()),
                    ),
                ],
                runs: vec![g.report.clone()],
                ..Report::default()
            };
            report
                .write(&out)
                .with_context(|| format!("writing the report into {}", out.display()))?;
            println!(
                "{} entries in {}; report in {}; oversells: {}; digest {}",
                g.entries,
                g.log_dir.display(),
                out.join("report.html").display(),
                g.report.oversells,
                g.report.final_digest
            );
            Ok(code(g.report.oversells == 0))
        }
        SimCommand::Replay {
            log,
            speed,
            rules,
            target,
            key,
            out,
            shards,
        } => {
            let (entries, tail) = replay::load_log(&log)?;
            let doc = rules.as_deref().map(replay::load_rules).transpose()?;
            let out = out.unwrap_or_else(|| {
                PathBuf::from("sim-out").join(if doc.is_some() { "whatif" } else { "replay" })
            });
            let mut facts = vec![
                (
                    "log".into(),
                    format!(
                        "{} ({} entries, tail {:?})",
                        log.display(),
                        entries.len(),
                        tail
                    ),
                ),
                ("speed".into(), format!("{speed:?}")),
                ("target".into(), target.clone()),
            ];
            let mut runs = Vec::new();
            let mut ok = true;
            if target == "in-process" {
                let (base, digest) = replay::replay_in_process(
                    &entries,
                    None,
                    speed,
                    "recorded rules",
                    shards,
                    true,
                )?;
                let hex = depot_engine::digest::hex(&digest);
                if let Some(rec) = generate::read_record(&log) {
                    let same = rec.digest == hex;
                    ok &= same;
                    facts.push((
                        "state digest".into(),
                        format!(
                            "{hex} ({} the generated run's {})",
                            if same { "equals" } else { "DIFFERS FROM" },
                            rec.digest
                        ),
                    ));
                } else {
                    facts.push(("state digest".into(), hex));
                }
                ok &= base.oversells == 0;
                runs.push(base);
                if let (Some(doc), Some(path)) = (&doc, &rules) {
                    let label = format!("rules of {}", path.display());
                    let (alt, _) = replay::replay_in_process(
                        &entries,
                        Some(doc),
                        speed,
                        &label,
                        shards,
                        true,
                    )?;
                    ok &= alt.oversells == 0;
                    runs.push(alt);
                }
            } else {
                let key = key.context(
                    "a URL target needs --key or DEPOT_KEY (an admin key of the tenant)",
                )?;
                let (base, outcome) = crate::http::replay_http(
                    &entries,
                    &target,
                    &key,
                    speed,
                    doc.as_ref(),
                    if doc.is_some() {
                        "rules of file"
                    } else {
                        "recorded rules"
                    },
                    true,
                )?;
                facts.push((
                    "requests".into(),
                    format!(
                        "{} sent, {} skipped (tenant creation, ticks), {} about reservations the server refused, errors by status {:?}",
                        outcome.sent, outcome.skipped, outcome.unmapped, outcome.errors
                    ),
                ));
                ok &= base.oversells == 0;
                runs.push(base);
            }
            let report = Report {
                title: if doc.is_some() {
                    "depot what-if replay".into()
                } else {
                    "depot replay".into()
                },
                facts,
                runs,
                ..Report::default()
            };
            report
                .write(&out)
                .with_context(|| format!("writing the report into {}", out.display()))?;
            for r in &report.runs {
                println!(
                    "{}: {} commands in {:.2} s, oversells {}, units sold {}, stockouts {}",
                    r.label,
                    r.commands,
                    r.wall_seconds,
                    r.oversells,
                    r.channels.iter().map(|c| c.units_sold()).sum::<i64>(),
                    r.channels.iter().map(|c| c.stockouts()).sum::<u64>()
                );
            }
            println!("report in {}", out.join("report.html").display());
            Ok(code(ok))
        }
        SimCommand::Dst {
            seed,
            seeds,
            steps,
            faults,
            out,
        } => {
            let opts = DstOptions {
                seed,
                seeds: seeds.max(1),
                steps,
                faults,
            };
            let (runs, failure) = dst::run(&opts, true);
            let out = out.unwrap_or_else(|| PathBuf::from("sim-out").join("dst"));
            dst::report(&opts, &runs, failure.as_ref())
                .write(&out)
                .with_context(|| format!("writing the report into {}", out.display()))?;
            match failure {
                Some(f) => {
                    eprintln!("{f}");
                    Ok(ExitCode::from(1))
                }
                None => {
                    println!(
                        "{} seeds passed ({} steps each, faults {}); report in {}",
                        runs.len(),
                        steps,
                        opts.faults,
                        out.join("report.html").display()
                    );
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

fn code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
