//! Waiting for a quiet machine before a measurement (the reference machine is shared, and a
//! compile or another benchmark next door halves the figures), and the share of the CPUs other
//! processes used during a run.

use std::time::{Duration, Instant};

/// CPU time counters: the machine's (from `/proc/stat`) and this process's, in clock ticks,
/// and this process's page faults that needed no disk (mostly first touches of fresh memory).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    total: u64,
    busy: u64,
    own: u64,
    own_kernel: u64,
    minor_faults: u64,
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
        Cpu {
            total,
            busy: total.saturating_sub(idle),
            ..Cpu::of_process(&me)
        }
    }

    /// A process's counters from the text of its `/proc/<pid>/stat`: the fields after the
    /// parenthesised command name (which may hold spaces) start with field 3, so minflt (field
    /// 10), utime (14) and stime (15) are the 8th, 12th and 13th. The machine's are left at 0.
    pub(crate) fn of_process(stat: &str) -> Cpu {
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let g: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            g.get(n - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Cpu {
            own: field(14) + field(15),
            own_kernel: field(15),
            minor_faults: field(10),
            ..Cpu::default()
        }
    }

    /// The process's CPU time (utime + stime), in clock ticks.
    pub(crate) fn process_ticks(&self) -> u64 {
        self.own
    }

    /// Page faults of this process since `before` that needed no disk.
    pub fn faults_since(&self, before: &Cpu) -> u64 {
        self.minor_faults.saturating_sub(before.minor_faults)
    }

    /// Share of this process's CPU time since `before` that was spent in the kernel.
    pub fn kernel_share_since(&self, before: &Cpu) -> f64 {
        let own = self.own.saturating_sub(before.own);
        self.own_kernel.saturating_sub(before.own_kernel) as f64 / own.max(1) as f64
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters are read from the right fields, a command name with spaces and a closing
    /// parenthesis included.
    #[test]
    fn process_counters_come_from_their_fields() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194304 1234 7 3 9 500 70 0 0 20 0";
        let c = Cpu::of_process(stat);
        assert_eq!((c.minor_faults, c.own, c.own_kernel), (1234, 570, 70));
        let later = Cpu::of_process(
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194304 5234 7 3 9 560 100 0 0 20 0",
        );
        assert_eq!(later.faults_since(&c), 4000);
        assert!((later.kernel_share_since(&c) - 30.0 / 90.0).abs() < 1e-9);
        // Nothing read: nothing counted, and no division by zero.
        assert_eq!(Cpu::of_process("").faults_since(&c), 0);
        assert_eq!(Cpu::default().kernel_share_since(&Cpu::default()), 0.0);
    }
}
