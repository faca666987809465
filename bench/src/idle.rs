//! Waiting for a quiet machine before a measurement (the reference machine is shared, and a
//! compile or another benchmark next door halves the figures), and the share of the CPUs other
//! processes used during a run.

use std::time::{Duration, Instant};

/// CPU time counters: the machine's (from `/proc/stat`) and this process's, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    total: u64,
    busy: u64,
    own: u64,
}

impl Cpu {
    pub fn now() -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = f.iter().sum();
        let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
        let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = me.rsplit_once(')').map_or("", |(_, r)| r);
        let g: Vec<&str> = rest.split_whitespace().collect();
        let tick = |k: usize| g.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Cpu {
            total,
            busy: total.saturating_sub(idle),
            own: tick(11) + tick(12),
        }
    }

    /// Share of the machine's CPU time used by other processes since `before`.
    pub fn foreign_since(&self, before: &Cpu) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let other = (self.busy.saturating_sub(before.busy))
            .saturating_sub(self.own.saturating_sub(before.own));
        other as f64 / total
    }
}

/// Waits (at most `max_secs`) until other processes use less than 10 % of the CPUs over a
/// second. Returns the share they used in the last second.
pub fn wait_idle(max_secs: f64) -> f64 {
    let start = Instant::now();
    loop {
        let before = Cpu::now();
        std::thread::sleep(Duration::from_secs(1));
        let busy = Cpu::now().foreign_since(&before);
        if busy < 0.10 || start.elapsed().as_secs_f64() >= max_secs {
            if start.elapsed().as_secs_f64() > 1.5 {
                eprintln!(
                    "  waited {:.0?} for an idle machine (others now {:.0}%)",
                    start.elapsed(),
                    busy * 100.0
                );
            }
            return busy;
        }
    }
}
