//! Checks of a run against the store's final state (oversell counting), medians over runs,
//! and the comparison table in Markdown with each row's ratio to depot.

use crate::load::{RunFigures, Wk};

/// The verdict of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Check {
    /// Units granted beyond a SKU's stock, summed over SKUs (from the clients' replies).
    pub oversell: i64,
    /// Every check of WORKLOADS.md held.
    pub pass: bool,
    /// What failed, if anything.
    pub note: String,
}

/// Checks a run: `available[s]` is each SKU's final available in the store (index rank - 1),
/// `granted[s]` the units the clients were granted; `ok` successful replies, `other` failed
/// requests. Holds when no SKU was granted beyond its stock (oversell 0), the store agrees with
/// the replies (available = stock - granted, so none negative), nothing failed, and for W3 when
/// everything sold exactly (100,000 successes, every available 0).
pub fn verify(w: Wk, available: &[i64], granted: &[i64], ok: u64, other: u64) -> Check {
    let stock = w.stock();
    let mut notes = Vec::new();
    let oversell: i64 = granted.iter().map(|&g| (g - stock).max(0)).sum();
    if oversell > 0 {
        notes.push(format!("{oversell} units oversold"));
    }
    if available.len() != granted.len() {
        notes.push(format!(
            "store has {} SKUs, expected {}",
            available.len(),
            granted.len()
        ));
    } else {
        let negative = available.iter().filter(|&&a| a < 0).count();
        if negative > 0 {
            notes.push(format!("{negative} SKUs negative"));
        }
        let off = available
            .iter()
            .zip(granted)
            .filter(|&(&a, &g)| a != stock - g)
            .count();
        if off > 0 {
            notes.push(format!("{off} SKUs: available != stock - granted"));
        }
    }
    if other > 0 {
        notes.push(format!("{other} failed requests"));
    }
    if w == Wk::W3 {
        let total = w.skus() as u64 * stock as u64;
        if ok != total {
            notes.push(format!("{ok} successes, expected {total}"));
        }
        if available.iter().any(|&a| a != 0) {
            notes.push("not sold out".into());
        }
    }
    Check {
        oversell,
        pass: notes.is_empty(),
        note: notes.join("; "),
    }
}

/// Times one run may be repeated because the host stole more than `--max-steal` of the
/// machine while it ran; the last try is kept whatever its steal.
pub const STEAL_REPEATS: u32 = 2;

/// Whether a run whose host steal was `steal` (a share, 0 to 1) is run again: the steal is
/// above `max_steal_pct` percent and the run has been repeated fewer than [`STEAL_REPEATS`]
/// times. A run is repeated whole, with the same seed, whichever system it measures.
pub fn repeat_for_steal(steal: f64, max_steal_pct: f64, repeated: u32) -> bool {
    steal * 100.0 > max_steal_pct && repeated < STEAL_REPEATS
}

/// One measured run of a cell.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub fig: RunFigures,
    pub check: Check,
    /// Shares of the machine's CPU time during the run: others, the server under test (when
    /// known), the client, the host's steal.
    pub cpu: crate::procs::Shares,
}

/// One row of the table: a system, a setting, a connection shape and a workload.
#[derive(Debug, Clone)]
pub struct Cell {
    /// A short key for goals (`depot-inproc-batch`, `redis-always-16x16`, ...).
    pub key: String,
    pub w: Wk,
    pub system: String,
    pub durability: String,
    pub shape: String,
    pub runs: Vec<Run>,
}

/// The median of `v` (the mean of the middle two for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Cell {
    pub fn ops(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|r| r.fig.ops_per_s)
                .collect::<Vec<_>>(),
        )
    }

    fn med(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(&self.runs.iter().map(f).collect::<Vec<_>>())
    }

    fn min_max(&self) -> (f64, f64) {
        let v: Vec<f64> = self.runs.iter().map(|r| r.fig.ops_per_s).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    }

    pub fn pass(&self) -> bool {
        !self.runs.is_empty() && self.runs.iter().all(|r| r.check.pass)
    }

    pub fn oversell(&self) -> i64 {
        self.runs
            .iter()
            .map(|r| r.check.oversell)
            .max()
            .unwrap_or(0)
    }
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A ratio as `12.3x` (`-` when undefined).
pub fn ratio(num: f64, den: f64) -> String {
    if den > 0.0 && num > 0.0 && num.is_finite() {
        let r = num / den;
        if r >= 100.0 {
            format!("{r:.0}x")
        } else if r >= 10.0 {
            format!("{r:.1}x")
        } else {
            format!("{r:.2}x")
        }
    } else {
        "-".into()
    }
}

/// The table: one row per cell, grouped by workload in the order given; the last column is
/// the reference cell's throughput (`reference` key, same workload) divided by the row's.
pub fn markdown(cells: &[Cell], reference: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "| workload | system | durability | clients | ops/s (median) | min–max | p50 µs | p99 µs | p99.9 µs | oversell | check | others' CPU | host steal | {reference} ÷ row |\n"
    ));
    s.push_str("|---|---|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|\n");
    for w in [Wk::W1, Wk::W2, Wk::W3] {
        let refops = cells
            .iter()
            .find(|c| c.w == w && c.key == reference)
            .map(Cell::ops);
        for c in cells.iter().filter(|c| c.w == w) {
            if c.runs.is_empty() {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | not measured (every run failed) | | | | | | FAIL | | | |\n",
                    w.name(),
                    c.system,
                    c.durability,
                    c.shape
                ));
                continue;
            }
            let (min, max) = c.min_max();
            let check = if c.pass() {
                "pass".to_string()
            } else {
                let notes: Vec<&str> = c
                    .runs
                    .iter()
                    .filter(|r| !r.check.pass)
                    .map(|r| r.check.note.as_str())
                    .collect();
                format!("FAIL: {}", notes.join(" / "))
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {}–{} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% | {} |\n",
                w.name(),
                c.system,
                c.durability,
                c.shape,
                thousands(c.ops()),
                thousands(min),
                thousands(max),
                thousands(c.med(|r| r.fig.p50_us as f64)),
                thousands(c.med(|r| r.fig.p99_us as f64)),
                thousands(c.med(|r| r.fig.p999_us as f64)),
                c.oversell(),
                check,
                c.med(|r| r.cpu.others) * 100.0,
                c.med(|r| r.cpu.steal) * 100.0,
                refops.map_or("-".into(), |r| ratio(r, c.ops())),
            ));
        }
    }
    s
}

/// A goal: `num` cell's throughput at least `target` times `den` cell's, per workload.
#[derive(Debug, Clone)]
pub struct Goal {
    pub what: &'static str,
    pub w: Wk,
    pub num: &'static str,
    pub den: &'static str,
    pub target: f64,
}

/// Each goal's ratio and verdict as Markdown list items.
pub fn goals(cells: &[Cell], goals: &[Goal]) -> String {
    let find = |w: Wk, key: &str| cells.iter().find(|c| c.w == w && c.key == key);
    let mut s = String::new();
    for g in goals {
        let line = match (find(g.w, g.num), find(g.w, g.den)) {
            (Some(n), Some(d)) if d.ops() > 0.0 => {
                let r = n.ops() / d.ops();
                format!(
                    "- {} {}: {} vs {} ops/s = {:.2}x (goal ≥ {}x): {}\n",
                    g.w.name(),
                    g.what,
                    thousands(n.ops()),
                    thousands(d.ops()),
                    r,
                    g.target,
                    if r >= g.target { "met" } else { "NOT met" }
                )
            }
            _ => format!("- {} {}: not measured\n", g.w.name(), g.what),
        };
        s.push_str(&line);
    }
    s
}

/// One line per cell measured for a "best of" row (batch sizes, client or connection counts),
/// in the order measured: what each count gave, so that a reader sees more than the best (a
/// larger count often buys throughput with latency).
pub fn tried_line(c: &Cell) -> String {
    format!(
        "- {} {}, {}: {} ops/s, p50 {} us, p99 {} us{}\n",
        c.w.name(),
        c.system,
        c.shape,
        thousands(c.ops()),
        thousands(c.med(|r| r.fig.p50_us as f64)),
        thousands(c.med(|r| r.fig.p99_us as f64)),
        if c.pass() { "" } else { " (check FAILED)" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_counts_oversell_and_mismatches() {
        // W3: 100 SKUs of 1,000, all sold exactly.
        let granted = vec![1_000; 100];
        let avail = vec![0; 100];
        let c = verify(Wk::W3, &avail, &granted, 100_000, 0);
        assert!(c.pass, "{}", c.note);
        assert_eq!(c.oversell, 0);
        // Two units too many on one SKU, and the store went negative.
        let mut g2 = granted.clone();
        g2[7] = 1_002;
        let mut a2 = avail.clone();
        a2[7] = -2;
        let c = verify(Wk::W3, &a2, &g2, 100_002, 0);
        assert!(!c.pass);
        assert_eq!(c.oversell, 2);
        assert!(c.note.contains("negative") && c.note.contains("100002 successes"));
        // W1: the store disagrees with the replies (a lost decrement).
        let g = vec![5; 10_000];
        let mut a = vec![1_000_000 - 5; 10_000];
        assert!(verify(Wk::W1, &a, &g, 50_000, 0).pass);
        a[0] += 1;
        let c = verify(Wk::W1, &a, &g, 50_000, 0);
        assert!(!c.pass && c.note.contains("1 SKUs"));
        assert!(!verify(Wk::W1, &a[..10], &g, 50_000, 0).pass);
        assert!(!verify(Wk::W1, &vec![1_000_000 - 5; 10_000], &g, 50_000, 3).pass);
    }

    #[test]
    fn medians_ratios_and_numbers() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(0.0), "0");
        assert_eq!(ratio(1_000.0, 10.0), "100x");
        assert_eq!(ratio(150.0, 10.0), "15.0x");
        assert_eq!(ratio(12.0, 10.0), "1.20x");
        assert_eq!(ratio(1.0, 0.0), "-");
    }

    fn cell(key: &str, w: Wk, ops: &[f64]) -> Cell {
        Cell {
            key: key.into(),
            w,
            system: key.into(),
            durability: "fsync".into(),
            shape: "1x1".into(),
            runs: ops
                .iter()
                .map(|&o| Run {
                    fig: RunFigures {
                        ops_per_s: o,
                        p50_us: 100,
                        p99_us: 900,
                        ..RunFigures::default()
                    },
                    check: Check {
                        oversell: 0,
                        pass: true,
                        note: String::new(),
                    },
                    ..Run::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_tried_line_gives_the_median_figures_and_a_failed_check() {
        let c = cell(
            "depot-http-batch",
            Wk::W1,
            &[500_000.0, 700_000.0, 600_000.0],
        );
        assert_eq!(
            tried_line(&c),
            "- W1 depot-http-batch, 1x1: 600,000 ops/s, p50 100 us, p99 900 us\n"
        );
        let mut bad = c.clone();
        bad.runs[1].check.pass = false;
        assert!(tried_line(&bad).ends_with("(check FAILED)\n"));
    }

    #[test]
    fn a_run_is_repeated_for_steal_above_the_limit_at_most_twice() {
        assert!(!repeat_for_steal(0.0, 10.0, 0));
        assert!(!repeat_for_steal(0.10, 10.0, 0), "at the limit: kept");
        assert!(repeat_for_steal(0.11, 10.0, 0));
        assert!(repeat_for_steal(0.35, 10.0, 1));
        assert!(
            !repeat_for_steal(0.35, 10.0, STEAL_REPEATS),
            "the last try is kept"
        );
        assert!(!repeat_for_steal(1.0, 100.0, 0), "100 %: never repeated");
    }

    #[test]
    fn table_and_goals() {
        let cells = vec![
            cell("depot", Wk::W1, &[1_000_000.0, 900_000.0, 1_100_000.0]),
            cell("redis", Wk::W1, &[50_000.0]),
            cell("depot", Wk::W3, &[10.0]),
        ];
        let t = markdown(&cells, "depot");
        assert_eq!(t.lines().count(), 5);
        assert!(
            t.contains("| W1 | depot | fsync | 1x1 | 1,000,000 | 900,000–1,100,000 | 100 | 900 |")
        );
        assert!(t.contains("20.0x |"), "{t}");
        // Every row has as many cells as the header, the host's steal among them.
        let cols = |l: &str| l.matches('|').count();
        assert!(
            t.lines()
                .all(|l| cols(l) == cols(t.lines().next().unwrap())),
            "{t}"
        );
        assert!(t
            .lines()
            .next()
            .unwrap()
            .contains("| others' CPU | host steal |"));
        let mut stolen = cell("redis", Wk::W2, &[40_000.0]);
        stolen.runs[0].cpu.steal = 0.34;
        let t2 = markdown(&[stolen], "depot");
        assert!(t2.contains("| pass | 0% | 34% | - |"), "{t2}");
        let g = goals(
            &cells,
            &[
                Goal {
                    what: "depot vs redis",
                    w: Wk::W1,
                    num: "depot",
                    den: "redis",
                    target: 10.0,
                },
                Goal {
                    what: "depot vs pg",
                    w: Wk::W1,
                    num: "depot",
                    den: "pg",
                    target: 100.0,
                },
            ],
        );
        assert!(g.contains("= 20.00x (goal ≥ 10x): met"), "{g}");
        assert!(g.contains("depot vs pg: not measured"));
    }
}
