//! Crash test: a child process (`depot crash-child`) drives a threaded engine on a real log
//! under concurrent load and prints every acknowledged write; the parent SIGKILLs it at a
//! random moment, recovers the log, and checks that nothing acknowledged was lost and that the
//! stock levels are consistent with the recovered reservations. Then the next round restarts
//! the child on the same directory.
//!
//! Rounds: `DEPOT_CRASH_ROUNDS` (default 12). Seed: `DEPOT_CRASH_SEED` (default: the clock;
//! printed, so a failing run can be repeated).

use depot_api::cli::{crash_tenant, CRASH_SKUS, CRASH_UNITS};
use depot_engine::{
    Command, Limits, Machine, Outcome, Refusal, Reply, Request, ReservationId, ReservationState,
    Sku,
};
use depot_wal::{read_log, recover, FsDir, Tail};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

/// What the child acknowledged about one reservation.
#[derive(Debug, Default)]
struct Acked {
    lines: Vec<(String, i64)>,
    committed: bool,
    released: bool,
}

fn read(machine: &mut Machine, command: Command, now: u64) -> Outcome {
    let req = Request {
        tenant: crash_tenant(),
        key_id: "crash-test".into(),
        idempotency_key: None,
        command,
    };
    machine.execute(&req, now).0.outcome
}

/// A recovered reservation's state and lines (SKU, units), if it exists.
fn recovered(
    machine: &mut Machine,
    id: u64,
    now: u64,
) -> Option<(ReservationState, Vec<(String, i64)>)> {
    let outcome = read(
        machine,
        Command::GetReservation {
            id: ReservationId(id),
        },
        now,
    );
    let Outcome::Ok(Reply::Reservation(v)) = outcome else {
        return None;
    };
    let lines = v
        .lines
        .iter()
        .map(|l| (l.sku.as_str().to_string(), l.quantity))
        .collect();
    Some((v.state, lines))
}

/// Runs the child for `run_for`, kills it, and returns the complete lines it printed.
fn run_child(dir: &Path, seed: u64, run_for: Duration) -> Vec<String> {
    let mut child = Process::new(env!("CARGO_BIN_EXE_depot"))
        .arg("crash-child")
        .arg(dir)
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the crash child");
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                // A line cut by the kill (no newline) was not fully acknowledged: ignore it.
                Ok(_) if buf.last() == Some(&b'\n') => {
                    lines.push(String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned())
                }
                Ok(_) => break,
            }
        }
        lines
    });
    std::thread::sleep(run_for);
    if let Some(status) = child.try_wait().expect("poll the child") {
        panic!("the crash child exited on its own with {status}");
    }
    child.kill().expect("SIGKILL the child"); // SIGKILL on Unix
    let status = child.wait().expect("reap the child");
    assert!(
        status.code().is_none(),
        "the child ended with {status}, not by the kill"
    );
    reader.join().expect("stdout reader")
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let rounds: usize = std::env::var("DEPOT_CRASH_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("DEPOT_CRASH_ROUNDS is a number"))
        .unwrap_or(12);
    let seed: u64 = std::env::var("DEPOT_CRASH_SEED")
        .ok()
        .map(|v| v.parse().expect("DEPOT_CRASH_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {rounds} rounds, DEPOT_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let started = Instant::now();

    let mut acked: BTreeMap<u64, Acked> = BTreeMap::new();
    // Reservations answered to a repeat of their key (`P` lines), with their lines.
    let mut repeated: Vec<(u64, Vec<(String, i64)>)> = Vec::new();
    let mut ready = false;
    let mut torn_tails = 0;
    for round in 0..rounds {
        // Early rounds may be killed during recovery or setup; most run into the load.
        let run_for = Duration::from_millis(rng.gen_range(30..600));
        let lines = run_child(&dir, seed.wrapping_add(round as u64), run_for);
        for line in &lines {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("READY"), None, None) => ready = true,
                (Some(kind @ ("R" | "P")), Some(id), Some(items)) => {
                    let id: u64 = id.parse().expect("reservation id");
                    let lines = items
                        .split(',')
                        .map(|it| {
                            let (sku, q) = it.split_once(':').expect("sku:qty");
                            (sku.to_string(), q.parse().expect("quantity"))
                        })
                        .collect();
                    if kind == "P" {
                        repeated.push((id, lines));
                        continue;
                    }
                    let prev = acked.insert(
                        id,
                        Acked {
                            lines,
                            ..Acked::default()
                        },
                    );
                    assert!(prev.is_none(), "reservation {id} acknowledged twice");
                }
                (Some(op @ ("C" | "X")), Some(id), None) => {
                    let id: u64 = id.parse().expect("reservation id");
                    let a = acked
                        .get_mut(&id)
                        .unwrap_or_else(|| panic!("{op} {id} before its reservation"));
                    assert!(!a.committed && !a.released, "{id} ended twice");
                    if op == "C" {
                        a.committed = true;
                    } else {
                        a.released = true;
                    }
                }
                _ => panic!("unexpected line from the child: {line:?}"),
            }
        }

        // Recovery must succeed; a torn tail (an unacknowledged write cut short) is fine.
        let fs = FsDir::open(&dir).expect("open the log directory");
        let (mut machine, tail) = recover(&fs, Limits::default(), 3)
            .unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        if matches!(tail, Tail::Torn { .. }) {
            torn_tails += 1;
        }
        let (entries, _) = read_log(&fs, 1).expect("read the log");
        let now = entries.last().map_or(0, |e| e.now);

        // Every acknowledged reservation exists, with its lines and its acknowledged end.
        for (&id, a) in &acked {
            let Some((state, got)) = recovered(&mut machine, id, now) else {
                panic!("round {round}: acknowledged reservation {id} lost");
            };
            assert_eq!(got, a.lines, "round {round}: reservation {id}'s lines");
            let allowed: &[ReservationState] = if a.committed {
                &[ReservationState::Committed]
            } else if a.released {
                &[ReservationState::Released]
            } else {
                // A commit or release may be durable without having been acknowledged.
                &[
                    ReservationState::Held,
                    ReservationState::Committed,
                    ReservationState::Released,
                ]
            };
            assert!(
                allowed.contains(&state),
                "round {round}: reservation {id} is {state:?}, expected one of {allowed:?}"
            );
        }

        // Every answer to a repeat names a reservation that is there, with its lines: a repeat
        // is acknowledged only once its first request is durable.
        for (id, lines) in &repeated {
            let Some((_, got)) = recovered(&mut machine, *id, now) else {
                panic!("round {round}: reservation {id}, answered to a repeat, lost");
            };
            assert_eq!(
                &got, lines,
                "round {round}: repeated reservation {id}'s lines"
            );
        }

        // The units every recovered reservation holds or has committed, per (SKU, location),
        // acknowledged or not.
        let mut held: HashMap<(String, String), (i64, i64)> = HashMap::new();
        for e in &entries {
            if !matches!(e.request.command, Command::Reserve { .. }) {
                continue;
            }
            let outcome = read(
                &mut machine,
                Command::GetReservation {
                    id: ReservationId(e.seq),
                },
                now,
            );
            let Outcome::Ok(Reply::Reservation(v)) = outcome else {
                continue; // refused (sold out): never existed
            };
            for line in &v.lines {
                for alloc in &line.allocations {
                    let k = (
                        line.sku.as_str().to_string(),
                        alloc.location.as_str().to_string(),
                    );
                    let slot = held.entry(k).or_default();
                    match v.state {
                        ReservationState::Held => slot.0 += alloc.quantity,
                        ReservationState::Committed => slot.1 += alloc.quantity,
                        _ => {}
                    }
                }
            }
        }

        // Stock levels: conservation, no negative availability, and reserved/committed equal
        // to what the reservations say.
        for s in CRASH_SKUS {
            let outcome = read(
                &mut machine,
                Command::GetStock {
                    sku: Sku::new(s).unwrap(),
                },
                now,
            );
            let v = match outcome {
                Outcome::Ok(Reply::Stock(v)) => v,
                Outcome::Refused(Refusal::NotFound { .. }) if !ready => continue,
                other => panic!("round {round}: stock of {s}: {other:?}"),
            };
            for l in &v.locations {
                let (reserved, committed) = held
                    .get(&(s.to_string(), l.location.as_str().to_string()))
                    .copied()
                    .unwrap_or_default();
                let at = format!("round {round}: {s} at {}: {l:?}", l.location.as_str());
                assert_eq!(
                    (l.damaged, l.quality_control, l.safety_stock),
                    (0, 0, 0),
                    "{at}"
                );
                assert!(l.available >= 0, "{at}");
                assert_eq!(
                    l.reserved + l.committed + l.available,
                    l.on_hand,
                    "{at}: not conserved"
                );
                assert!(l.on_hand == 0 || l.on_hand == CRASH_UNITS, "{at}: on_hand");
                assert_eq!(l.reserved, reserved, "{at}: reserved vs held reservations");
                assert_eq!(l.committed, committed, "{at}: committed vs reservations");
            }
        }

        // The log tool agrees that the log is readable.
        let verify = Process::new(env!("CARGO_BIN_EXE_depot"))
            .args(["log", "verify"])
            .arg(&dir)
            .output()
            .expect("run depot log verify");
        assert!(
            verify.status.success(),
            "round {round}: depot log verify failed: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        eprintln!(
            "round {round}: killed after {run_for:?}, {} lines, log has {} entries, tail {tail:?}",
            lines.len(),
            entries.len()
        );
    }
    assert!(
        ready && !acked.is_empty(),
        "the child never got to acknowledge a write: the test checked nothing"
    );
    eprintln!(
        "crash test: {} reservations acknowledged, {torn_tails} torn tails, {:?}",
        acked.len(),
        started.elapsed()
    );
}
