//! CPU time of the servers under test (by process name), so a run can report how much of the
//! machine other processes took, apart from the client (this process) and the server.

use crate::idle::Cpu;
use std::sync::atomic::{AtomicU32, Ordering};

/// CPU clock ticks (user + system) used so far by every process whose name is one of `names`.
pub fn ticks_of(names: &[&str]) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut sum = 0;
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(t) = parse_stat(&stat, names) {
            sum += t;
        }
    }
    sum
}

/// utime + stime of one `/proc/<pid>/stat` line when its command name is one of `names`.
fn parse_stat(stat: &str, names: &[&str]) -> Option<u64> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    if !names.contains(&comm) {
        return None;
    }
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3; utime and stime are fields 14 and 15, and the reaped
    // children's (cutime, cstime: PostgreSQL's exited backends) 16 and 17.
    let t = |k: usize| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(t(11) + t(12) + t(13) + t(14))
}

/// Machine, own and server CPU counters at one instant, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    total: u64,
    busy: u64,
    steal: u64,
    own: u64,
    server: u64,
}

/// Shares of the machine's CPU time over an interval (0 to 1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shares {
    /// Processes other than this one and the servers under test.
    pub others: f64,
    /// The servers under test.
    pub server: f64,
    /// This process (the client; in process, client and engine).
    pub client: f64,
    /// Time the hypervisor ran something else while this machine's CPUs had work ("steal" in
    /// `/proc/stat`; 0 on bare metal): a share here means the run was slowed from outside.
    pub steal: f64,
}

/// (total, busy, steal) ticks of the machine from `/proc/stat`; busy includes steal.
fn machine() -> (u64, u64, u64) {
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
    // Idle and iowait, and interrupts (irq, softirq): the latter are mostly the loopback
    // traffic and block I/O of the benchmark itself, which no process is charged for.
    let field = |k: usize| f.get(k).copied().unwrap_or(0);
    let not_busy = field(3) + field(4) + field(5) + field(6);
    (total, total.saturating_sub(not_busy), field(7))
}

/// This process's ticks.
fn own() -> u64 {
    let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    Cpu::of_process(&me).process_ticks()
}

/// Process names of the peer servers under test (depot's server is followed by its pid, so
/// another `depot` process on the machine counts as someone else's).
pub const SERVERS: &[&str] = &["redis-server", "postgres"];

/// The pid of the running `depot serve` under test (0: none).
static DEPOT_PID: AtomicU32 = AtomicU32::new(0);

/// Counts `pid`'s CPU as the server's from now on (0: stop).
pub fn set_depot_pid(pid: u32) {
    DEPOT_PID.store(pid, Ordering::Relaxed);
}

/// utime + stime of one process.
fn ticks_of_pid(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(0, |stat| Cpu::of_process(&stat).process_ticks())
}

impl Snapshot {
    pub fn now() -> Snapshot {
        let (total, busy, steal) = machine();
        Snapshot {
            total,
            busy,
            steal,
            own: own(),
            server: ticks_of(SERVERS) + ticks_of_pid(DEPOT_PID.load(Ordering::Relaxed)),
        }
    }

    /// The shares of the machine's CPU time since `before` (see [`Shares`]).
    pub fn since(&self, before: &Snapshot) -> Shares {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let busy = self.busy.saturating_sub(before.busy) as f64;
        let steal = self.steal.saturating_sub(before.steal) as f64;
        let own = self.own.saturating_sub(before.own) as f64;
        let server = self.server.saturating_sub(before.server) as f64;
        Shares {
            others: ((busy - steal - own - server) / total).max(0.0),
            server: (server / total).min(1.0),
            client: (own / total).min(1.0),
            steal: (steal / total).min(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        let line = "1234 (redis-server) S 1 1234 1234 0 -1 4194560 300 0 0 0 17 5 0 0 20 0 5 0";
        assert_eq!(parse_stat(line, SERVERS), Some(22));
        let reaped = "1 (postgres) S 1 1 1 0 -1 0 0 0 0 0 10 5 30 7 20";
        assert_eq!(parse_stat(reaped, SERVERS), Some(52));
        assert_eq!(parse_stat(line, &["postgres"]), None);
        assert_eq!(ticks_of_pid(0), 0);
        assert!(ticks_of_pid(std::process::id()) < u64::MAX);
        // A name with spaces and parentheses.
        let odd = "9 (a (b) c) R 1 1 1 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(parse_stat(odd, &["a (b) c"]), Some(7));
        assert_eq!(parse_stat("garbage", SERVERS), None);
    }

    #[test]
    fn steal_is_its_own_share_not_others() {
        let at = |total, busy, steal, own, server| Snapshot {
            total,
            busy,
            steal,
            own,
            server,
        };
        let before = at(1_000, 400, 10, 100, 100);
        // 200 ticks: 150 busy, of them 30 stolen, 40 client, 50 server: 30 others.
        let s = at(1_200, 550, 40, 140, 150).since(&before);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(s.steal, 0.15), "{s:?}");
        assert!(close(s.client, 0.20), "{s:?}");
        assert!(close(s.server, 0.25), "{s:?}");
        assert!(close(s.others, 0.15), "{s:?}");
        // No time passed: nothing divides by zero.
        assert_eq!(before.since(&before), Shares::default());
    }
}
