//! Run reports: `report.md` and a self-contained `report.html` (inline SVG charts, no scripts)
//! in the run's output directory, plus `report.json` with the same figures for tools.

use crate::stats::{ratio, ChannelStats, Percentiles, Window};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// One run's figures (a what-if report has two).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub label: String,
    pub commands: u64,
    pub wall_seconds: f64,
    pub simulated_seconds: f64,
    pub latency: Percentiles,
    pub window_seconds: f64,
    pub windows: Vec<Window>,
    pub channels: Vec<ChannelStats>,
    /// Invariant violations found by the checks after every step (must be 0).
    pub oversells: u64,
    pub violations: Vec<String>,
    pub holds_expired: u64,
    pub units_supplied: i64,
    pub final_digest: String,
}

/// A whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub title: String,
    /// Key facts, in order (scenario, seed, log directory, digests...).
    pub facts: Vec<(String, String)>,
    pub runs: Vec<RunReport>,
    /// Extra sections of plain text (DST seeds, notes).
    pub sections: Vec<(String, Vec<String>)>,
    /// A table for the DST report: header and rows.
    pub table: Option<(Vec<String>, Vec<Vec<String>>)>,
}

impl Report {
    /// Writes `report.md`, `report.html` and `report.json` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("report.html"), self.html())?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json)
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# {}\n", self.title);
        for (k, v) in &self.facts {
            let _ = writeln!(s, "- **{k}**: {v}");
        }
        if !self.runs.is_empty() {
            s.push_str("\n## Summary\n\n");
            s.push_str(&md_table(&summary_rows(&self.runs)));
            s.push_str("\n## Channels\n\n");
            for (h, rows) in channel_tables(&self.runs) {
                let _ = writeln!(s, "### {h}\n");
                s.push_str(&md_table(&rows));
                s.push('\n');
            }
            for r in &self.runs {
                let _ = writeln!(
                    s,
                    "## Over time: {} (windows of {} simulated s)\n",
                    r.label, r.window_seconds
                );
                s.push_str(&md_table(&window_rows(r)));
                s.push('\n');
                if !r.violations.is_empty() {
                    let _ = writeln!(s, "### Invariant violations ({})\n", r.oversells);
                    for v in &r.violations {
                        let _ = writeln!(s, "- {v}");
                    }
                    s.push('\n');
                }
            }
        }
        if let Some((head, rows)) = &self.table {
            let mut all = vec![head.clone()];
            all.extend(rows.iter().cloned());
            s.push('\n');
            s.push_str(&md_table(&all));
        }
        for (h, lines) in &self.sections {
            let _ = writeln!(s, "\n## {h}\n");
            for l in lines {
                let _ = writeln!(s, "- {l}");
            }
        }
        s
    }

    pub fn html(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;\
             padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}td:first-child,\
             th:first-child{{text-align:left}}.bad{{color:#b00;font-weight:bold}}\
             svg{{margin:0.5em 1em 0.5em 0}}</style></head><body>\n<h1>{}</h1>\n<ul>",
            esc(&self.title),
            esc(&self.title)
        );
        for (k, v) in &self.facts {
            let _ = write!(s, "<li><b>{}</b>: {}</li>", esc(k), esc(v));
        }
        s.push_str("</ul>\n");
        if !self.runs.is_empty() {
            s.push_str("<h2>Summary</h2>\n");
            s.push_str(&html_table(&summary_rows(&self.runs)));
            s.push_str("<h2>Channels</h2>\n");
            for (h, rows) in channel_tables(&self.runs) {
                let _ = write!(s, "<h3>{}</h3>", esc(&h));
                s.push_str(&html_table(&rows));
            }
            s.push_str(&channel_chart(&self.runs));
            for r in &self.runs {
                let _ = writeln!(s, "<h2>Over time: {}</h2>", esc(&r.label));
                let xs = |f: &dyn Fn(&Window) -> f64| -> Vec<(f64, f64)> {
                    r.windows.iter().map(|w| (w.start_s / 60.0, f(w))).collect()
                };
                let per_s = r.window_seconds.max(1e-9);
                s.push_str(&line_chart(
                    "Throughput (commands per simulated second)",
                    "simulated minutes",
                    &[("commands/s", "#1f77b4", xs(&|w| w.commands as f64 / per_s))],
                ));
                s.push_str(&line_chart(
                    "Latency (µs, wall time)",
                    "simulated minutes",
                    &[
                        ("p50", "#2ca02c", xs(&|w| w.p50_us)),
                        ("p99", "#ff7f0e", xs(&|w| w.p99_us)),
                        ("p99.9", "#d62728", xs(&|w| w.p999_us)),
                    ],
                ));
                s.push_str(&line_chart(
                    "Orders, stockouts and expired holds per window",
                    "simulated minutes",
                    &[
                        ("orders", "#1f77b4", xs(&|w| w.orders as f64)),
                        ("stockouts", "#d62728", xs(&|w| w.stockouts as f64)),
                        ("holds expired", "#9467bd", xs(&|w| w.holds_expired as f64)),
                    ],
                ));
                if !r.violations.is_empty() {
                    let _ = write!(
                        s,
                        "<h3 class=\"bad\">Invariant violations ({})</h3><ul>",
                        r.oversells
                    );
                    for v in &r.violations {
                        let _ = write!(s, "<li>{}</li>", esc(v));
                    }
                    s.push_str("</ul>");
                }
            }
        }
        if let Some((head, rows)) = &self.table {
            let mut all = vec![head.clone()];
            all.extend(rows.iter().cloned());
            s.push_str(&html_table(&all));
        }
        for (h, lines) in &self.sections {
            let _ = write!(s, "<h2>{}</h2><ul>", esc(h));
            for l in lines {
                let _ = write!(s, "<li>{}</li>", esc(l));
            }
            s.push_str("</ul>");
        }
        s.push_str("</body></html>\n");
        s
    }
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}
fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn summary_rows(runs: &[RunReport]) -> Vec<Vec<String>> {
    let mut head = vec!["".to_string()];
    head.extend(runs.iter().map(|r| r.label.clone()));
    let row = |name: &str, f: &dyn Fn(&RunReport) -> String| -> Vec<String> {
        let mut v = vec![name.to_string()];
        v.extend(runs.iter().map(f));
        v
    };
    vec![
        head,
        row("commands", &|r| r.commands.to_string()),
        row("simulated time", &|r| {
            format!("{:.0} s", r.simulated_seconds)
        }),
        row("wall time", &|r| format!("{:.2} s", r.wall_seconds)),
        row("throughput (wall)", &|r| {
            format!(
                "{:.0} commands/s",
                r.commands as f64 / r.wall_seconds.max(1e-9)
            )
        }),
        row("latency p50 / p99 / p99.9 / max", &|r| {
            format!(
                "{} / {} / {} / {} µs",
                f1(r.latency.p50_us),
                f1(r.latency.p99_us),
                f1(r.latency.p999_us),
                f1(r.latency.max_us)
            )
        }),
        row("oversells (must be 0)", &|r| r.oversells.to_string()),
        row("holds expired", &|r| r.holds_expired.to_string()),
        row("units supplied (received)", &|r| {
            r.units_supplied.to_string()
        }),
        row("units sold", &|r| {
            r.channels
                .iter()
                .map(|c| c.units_sold())
                .sum::<i64>()
                .to_string()
        }),
        row("sell-through", &|r| {
            pct(ratio(
                r.channels.iter().map(|c| c.units_sold()).sum(),
                r.units_supplied,
            ))
        }),
        row("stockouts (shown sold out + refused)", &|r| {
            r.channels
                .iter()
                .map(|c| c.stockouts())
                .sum::<u64>()
                .to_string()
        }),
        row("final state digest", &|r| {
            r.final_digest.chars().take(16).collect()
        }),
    ]
}

/// One table per run, or for two runs (what-if) one table per channel side by side.
fn channel_tables(runs: &[RunReport]) -> Vec<(String, Vec<Vec<String>>)> {
    let head: Vec<String> = [
        "channel",
        "orders",
        "held",
        "stockouts",
        "shown sold out",
        "refused: no stock",
        "of which after a stale listing",
        "units sold",
        "sell-through",
        "fill rate",
        "holds expired",
        "released",
        "shipped",
        "short-picked",
        "returned",
        "commits lost",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cells = |c: &ChannelStats, supplied: i64| -> Vec<String> {
        vec![
            c.orders.to_string(),
            c.orders_held.to_string(),
            c.stockouts().to_string(),
            c.listing_sold_out.to_string(),
            c.refused_no_stock.to_string(),
            c.lag_refusals.to_string(),
            c.units_sold().to_string(),
            pct(ratio(c.units_sold(), supplied)),
            pct(c.fill_rate()),
            c.holds_expired.to_string(),
            c.holds_released.to_string(),
            c.units_shipped.to_string(),
            c.units_short_picked.to_string(),
            c.units_returned.to_string(),
            c.commits_lost.to_string(),
        ]
    };
    if runs.len() == 2 {
        let mut rows = vec![head];
        for c in &runs[0].channels {
            for r in runs {
                if let Some(x) = r.channels.iter().find(|x| x.channel == c.channel) {
                    let mut row = vec![format!("{} ({})", c.channel, r.label)];
                    row.extend(cells(x, r.units_supplied));
                    rows.push(row);
                }
            }
        }
        return vec![("Side by side".into(), rows)];
    }
    runs.iter()
        .map(|r| {
            let mut rows = vec![head.clone()];
            for c in &r.channels {
                let mut row = vec![c.channel.clone()];
                row.extend(cells(c, r.units_supplied));
                rows.push(row);
            }
            (r.label.clone(), rows)
        })
        .collect()
}

fn window_rows(r: &RunReport) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "from (s)",
        "commands",
        "orders",
        "stockouts",
        "holds expired",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for w in &r.windows {
        rows.push(vec![
            format!("{:.0}", w.start_s),
            w.commands.to_string(),
            w.orders.to_string(),
            w.stockouts.to_string(),
            w.holds_expired.to_string(),
            f1(w.p50_us),
            f1(w.p99_us),
            f1(w.p999_us),
        ]);
    }
    rows
}

fn md_table(rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(s, "| {} |", r.join(" | "));
        if i == 0 {
            let _ = writeln!(s, "|{}", "---|".repeat(r.len()));
        }
    }
    s
}

fn html_table(rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table>");
    for (i, r) in rows.iter().enumerate() {
        s.push_str("<tr>");
        for c in r {
            if i == 0 {
                let _ = write!(s, "<th>{}</th>", esc(c));
            } else {
                let _ = write!(s, "<td>{}</td>", esc(c));
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>\n");
    s
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 520.0;
const H: f64 = 220.0;
const L: f64 = 60.0;
const B: f64 = 36.0;
const T: f64 = 28.0;
const R: f64 = 110.0;

fn axis_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// One series of a line chart: name, colour, (x, y) points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart of several series as an inline SVG.
pub fn line_chart(title: &str, x_label: &str, series: &[Series<'_>]) -> String {
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for &(x, y) in pts {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    let x_max = if x_max <= 0.0 { 1.0 } else { x_max };
    let y_max = axis_max(y_max);
    let px = |x: f64| L + x / x_max * (W - L - R);
    let py = |y: f64| H - B - y / y_max * (H - B - T);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-size=\"11\" role=\"img\"><title>{t}</title>\
         <text x=\"{L}\" y=\"16\" font-weight=\"bold\">{t}</text>",
        t = esc(title)
    );
    // Axes, grid and labels.
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#e5e5e5\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - R,
            L - 4.0,
            py(y) + 4.0,
            short(y),
            y0 = py(y)
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{L}\" x2=\"{L}\" y1=\"{T}\" y2=\"{}\" stroke=\"#444\"/>\
         <line x1=\"{L}\" x2=\"{}\" y1=\"{yb}\" y2=\"{yb}\" stroke=\"#444\"/>\
         <text x=\"{L}\" y=\"{}\">0</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        H - B,
        W - R,
        H - B + 14.0,
        W - R,
        H - B + 14.0,
        short(x_max),
        (L + W - R) / 2.0,
        H - 6.0,
        esc(x_label),
        yb = H - B
    );
    for (i, (name, color, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            path.join(" "),
            W - R + 10.0,
            T + 16.0 * i as f64,
            W - R + 24.0,
            T + 16.0 * i as f64 + 9.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Grouped bars per channel: units sold and stockouts of each run.
fn channel_chart(runs: &[RunReport]) -> String {
    let names: Vec<&str> = runs[0]
        .channels
        .iter()
        .map(|c| c.channel.as_str())
        .collect();
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    let mut out = String::new();
    type Metric = fn(&ChannelStats) -> f64;
    let metrics: [(&str, Metric); 2] = [
        ("Units sold per channel", |c| c.units_sold() as f64),
        ("Stockouts per channel (shown sold out + refused)", |c| {
            c.stockouts() as f64
        }),
    ];
    for (title, f) in metrics {
        let values: Vec<Vec<f64>> = runs
            .iter()
            .map(|r| {
                names
                    .iter()
                    .map(|n| r.channels.iter().find(|c| c.channel == *n).map_or(0.0, f))
                    .collect()
            })
            .collect();
        let max = axis_max(values.iter().flatten().copied().fold(0.0, f64::max));
        let group = (W - L - R) / names.len().max(1) as f64;
        let bar = group * 0.8 / runs.len() as f64;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
             font-size=\"11\" role=\"img\"><title>{t}</title>\
             <text x=\"{L}\" y=\"16\" font-weight=\"bold\">{t}</text>\
             <line x1=\"{L}\" x2=\"{}\" y1=\"{yb}\" y2=\"{yb}\" stroke=\"#444\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            W - R,
            L - 4.0,
            T + 4.0,
            short(max),
            t = esc(title),
            yb = H - B
        );
        for (ci, n) in names.iter().enumerate() {
            for (ri, v) in values.iter().enumerate() {
                let h = v[ci] / max * (H - B - T);
                let x = L + group * ci as f64 + group * 0.1 + bar * ri as f64;
                let _ = write!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\">\
                     <title>{}: {}</title></rect>",
                    H - B - h,
                    bar.max(1.0),
                    colors[ri % colors.len()],
                    esc(n),
                    v[ci]
                );
            }
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                L + group * (ci as f64 + 0.5),
                H - B + 14.0,
                esc(n)
            );
        }
        for (ri, r) in runs.iter().enumerate() {
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
                 <text x=\"{}\" y=\"{}\">{}</text>",
                W - R + 10.0,
                T + 16.0 * ri as f64,
                colors[ri % colors.len()],
                W - R + 24.0,
                T + 16.0 * ri as f64 + 9.0,
                esc(&r.label.chars().take(14).collect::<String>())
            );
        }
        s.push_str("</svg>\n");
        out.push_str(&s);
    }
    out
}
