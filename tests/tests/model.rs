//! Model test: random command sequences run through the sharded engine and through the naive
//! reference model of `docs/allocation.md` (`depot_tests::model`) give the same answers and the
//! same state after every step, and the invariants hold after every step. Replay test: a
//! sequence recorded by the threaded engine replays to the same state digest on any number of
//! shards, and the threaded engine answers exactly as the single-threaded machine.

use depot_engine::outcome::StockView;
use depot_engine::rules::{OversellPolicy, Routing, Rule, RuleDocument, RuleKind};
use depot_engine::snapshot::{from_bytes, load, serialize_state_into, to_bytes, AlignedBytes};
use depot_engine::{
    Bucket, ChannelId, ChannelKind, Command, CommitLine, Component, Engine, EngineConfig,
    FillPolicy, FulfilLine, Limits, LineRequest, LocationId, LocationKind, LogEntry, Machine,
    MemoryJournal, Request, ReservationId, Sku, TenantId,
};
use depot_tests::model::{observe, rule_matches_sku, Answer, Life, Model, Obs, Reservation};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::BTreeMap;

const TENANT: &str = "acme";
const T0: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;
/// Plain SKUs, then the bundles, then a SKU that is never stocked.
const SKUS: [&str; 9] = [
    "A-1", "A-2", "B-1", "B-2", "C-1", "C-2", "KIT-1", "KIT-2", "Z-9",
];
const PLAIN: usize = 6;
/// Three real locations, then one that does not exist.
const LOCS: [&str; 4] = ["l1", "l2", "l3", "nowhere"];
/// Three real channels, then one that does not exist.
const CHANNELS: [&str; 4] = ["web", "amazon", "b2b", "ghost"];
const REGIONS: [&str; 5] = ["", "eu", "us", "asia", "mars"];

fn sku(s: &str) -> Sku {
    Sku::new(s).unwrap()
}
fn loc(s: &str) -> LocationId {
    LocationId::new(s).unwrap()
}
fn ch(s: &str) -> ChannelId {
    ChannelId::new(s).unwrap()
}
fn req(command: Command) -> Request {
    Request {
        tenant: TenantId::new(TENANT).unwrap(),
        key_id: "model".into(),
        idempotency_key: None,
        command,
    }
}

// ---------------------------------------------------------------------------------------------
// the world: locations, channels, bundles and a small set of rules

fn setup_commands() -> Vec<Command> {
    let mut out = vec![Command::CreateTenant];
    for (l, region) in [("l1", Some("eu")), ("l2", Some("us")), ("l3", Some("asia"))] {
        out.push(Command::PutLocation {
            location: loc(l),
            kind: LocationKind::Warehouse,
            name: l.into(),
            region: region.map(str::to_string),
            wms: None,
        });
    }
    for (c, kind, priority) in [
        ("web", ChannelKind::Shopify, 10),
        ("amazon", ChannelKind::Amazon, 5),
        ("b2b", ChannelKind::B2b, 1),
    ] {
        out.push(Command::PutChannel {
            channel: ch(c),
            kind,
            priority,
        });
    }
    let comp = |s: &str, q: i64| Component {
        sku: sku(s),
        quantity: q,
    };
    out.push(Command::PutBundle {
        sku: sku("KIT-1"),
        components: vec![comp("A-1", 1), comp("B-1", 2)],
    });
    out.push(Command::PutBundle {
        sku: sku("KIT-2"),
        components: vec![comp("A-2", 1), comp("C-1", 1), comp("A-1", 3)],
    });
    // Refused: a component cannot become a bundle.
    out.push(Command::PutBundle {
        sku: sku("A-1"),
        components: vec![comp("C-2", 1)],
    });
    out
}

fn rule(kind: RuleKind) -> Rule {
    Rule {
        kind,
        ..Rule::default()
    }
}

fn rule_pool() -> Vec<Rule> {
    let skus = |l: &[&str]| Some(l.iter().map(|s| sku(s)).collect::<Vec<_>>());
    let chans = |l: &[&str]| Some(l.iter().map(|c| ch(c)).collect::<Vec<_>>());
    let locs = |l: &[&str]| Some(l.iter().map(|x| loc(x)).collect::<Vec<_>>());
    let mut regions = BTreeMap::new();
    // Not creation order: from eu, asia (l3) comes before us (l2); from us, asia before eu.
    regions.insert("eu".to_string(), vec!["asia".to_string(), "us".to_string()]);
    regions.insert("us".to_string(), vec!["asia".to_string()]);
    regions.insert("asia".to_string(), vec!["us".to_string()]);
    vec![
        Rule {
            channels: chans(&["b2b"]),
            ..rule(RuleKind::Eligibility {
                locations: locs(&["l1"]),
                deny_locations: None,
            })
        },
        Rule {
            sku_prefix: Some("A".into()),
            ..rule(RuleKind::Eligibility {
                locations: None,
                deny_locations: locs(&["l3"]),
            })
        },
        Rule {
            except_channels: chans(&["web"]),
            ..rule(RuleKind::Eligibility {
                locations: locs(&["l1", "l3"]),
                deny_locations: locs(&["l3"]),
            })
        },
        rule(RuleKind::Buffer {
            units: Some(2),
            percent: None,
        }),
        Rule {
            channels: chans(&["amazon"]),
            ..rule(RuleKind::Buffer {
                units: None,
                percent: Some(20),
            })
        },
        Rule {
            skus: skus(&["B-1"]),
            ..rule(RuleKind::Buffer {
                units: None,
                percent: Some(50),
            })
        },
        Rule {
            sku_prefix: Some("B".into()),
            ..rule(RuleKind::Cap { units: 5 })
        },
        Rule {
            channels: chans(&["b2b"]),
            skus: skus(&["A-1", "C-2"]),
            ..rule(RuleKind::Cap { units: 3 })
        },
        Rule {
            sku_prefix: Some("A".into()),
            ..rule(RuleKind::RingFence {
                channel: ch("b2b"),
                units: Some(4),
                percent: None,
            })
        },
        rule(RuleKind::RingFence {
            channel: ch("web"),
            units: None,
            percent: Some(30),
        }),
        Rule {
            skus: skus(&["C-1"]),
            ..rule(RuleKind::RingFence {
                channel: ch("amazon"),
                units: Some(2),
                percent: None,
            })
        },
        rule(RuleKind::Scarcity {
            threshold: 6,
            min_priority: 5,
        }),
        Rule {
            sku_prefix: Some("C".into()),
            ..rule(RuleKind::Scarcity {
                threshold: 3,
                min_priority: 20,
            })
        },
        rule(RuleKind::Routing(Routing::Priority {
            locations: vec![loc("l3"), loc("l1")],
        })),
        Rule {
            sku_prefix: Some("A".into()),
            ..rule(RuleKind::Routing(Routing::MostStock))
        },
        Rule {
            channels: chans(&["amazon"]),
            ..rule(RuleKind::Routing(Routing::FewestSplits))
        },
        Rule {
            except_channels: chans(&["b2b"]),
            ..rule(RuleKind::Routing(Routing::Nearest {
                regions: regions.clone(),
            }))
        },
        Rule {
            skus: skus(&["A-1", "B-1"]),
            ..rule(RuleKind::Routing(Routing::Priority {
                locations: vec![loc("l2")],
            }))
        },
        Rule {
            sku_prefix: Some("A-".into()),
            ..rule(RuleKind::Buffer {
                units: Some(1),
                percent: None,
            })
        },
        Rule {
            skus: skus(&["A-1"]),
            ..rule(RuleKind::RingFence {
                channel: ch("b2b"),
                units: Some(1),
                percent: None,
            })
        },
        Rule {
            channels: chans(&["web"]),
            ..rule(RuleKind::Routing(Routing::FewestSplits))
        },
        Rule {
            sku_prefix: Some("C".into()),
            ..rule(RuleKind::Cap { units: 0 })
        },
        rule(RuleKind::Routing(Routing::Nearest {
            regions: regions.clone(),
        })),
        Rule {
            channels: chans(&["web", "amazon"]),
            ..rule(RuleKind::Buffer {
                units: Some(1),
                percent: None,
            })
        },
        Rule {
            sku_prefix: Some("A".into()),
            channels: chans(&["amazon"]),
            ..rule(RuleKind::Routing(Routing::MostStock))
        },
    ]
}

fn rules_document(picks: &[u8], lowest_priority_first: bool) -> RuleDocument {
    let pool = rule_pool();
    RuleDocument {
        version: 0,
        oversell_policy: if lowest_priority_first {
            OversellPolicy::LowestPriorityFirst
        } else {
            OversellPolicy::NewestFirst
        },
        rules: picks
            .iter()
            .map(|&p| pool[p as usize % pool.len()].clone())
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// generated steps: abstract choices, turned into requests against the current state

#[derive(Clone, Debug)]
enum Op {
    Receive {
        sku: u8,
        loc: u8,
        q: i64,
    },
    Expect {
        sku: u8,
        loc: u8,
        q: i64,
        dated: bool,
    },
    Adjust {
        sku: u8,
        loc: u8,
        d: i64,
    },
    Set {
        sku: u8,
        loc: u8,
        q: i64,
        compare: u8,
    },
    Move {
        sku: u8,
        loc: u8,
        from: u8,
        to: u8,
        q: i64,
    },
    Transfer {
        sku: u8,
        loc: u8,
        to: u8,
        q: i64,
        dated: bool,
    },
    Reserve {
        channel: u8,
        lines: Vec<(u8, i64)>,
        ttl: u8,
        ship: u8,
        fill: u8,
        order_ref: bool,
    },
    Extend {
        res: u8,
        ttl: u8,
    },
    Commit {
        res: u8,
        lines: Option<Vec<(u8, u8)>>,
    },
    Release {
        res: u8,
    },
    Cancel {
        res: u8,
    },
    Fulfil {
        res: u8,
        picks: Vec<(u8, u8, u8)>,
    },
    Return {
        res: u8,
        pick: u8,
        q: u8,
        damaged: bool,
    },
    Tick,
    PutRules {
        picks: Vec<u8>,
        lowest_priority_first: bool,
    },
    PutChannel {
        channel: u8,
        priority: u8,
    },
    GetStock {
        sku: u8,
    },
    GetReservation {
        res: u8,
    },
    Explain {
        sku: u8,
        channel: u8,
    },
    /// Sends an earlier request again, idempotency key and all.
    Repeat {
        back: u8,
    },
}

#[derive(Clone, Debug)]
struct Step {
    /// Milliseconds the clock moves before this step.
    advance: u64,
    /// Index of an idempotency key, if the request carries one.
    key: Option<u8>,
    /// Starts a new batch for the threaded engine.
    batch_break: bool,
    op: Op,
}

fn stock_sku() -> impl Strategy<Value = u8> {
    prop_oneof![12 => 0..PLAIN as u8, 1 => Just(6u8)]
}
fn stock_loc() -> impl Strategy<Value = u8> {
    prop_oneof![12 => 0..3u8, 1 => Just(3u8)]
}

fn op() -> impl Strategy<Value = Op> {
    let res = || prop_oneof![12 => 0..8u8, 1 => Just(255u8)];
    prop_oneof![
        5 => (stock_sku(), stock_loc(), 0..20i64).prop_map(|(sku, loc, q)| Op::Receive { sku, loc, q }),
        1 => (stock_sku(), stock_loc(), 1..10i64, any::<bool>()).prop_map(|(sku, loc, q, dated)| Op::Expect { sku, loc, q, dated }),
        2 => (stock_sku(), stock_loc(), -8..=8i64).prop_map(|(sku, loc, d)| Op::Adjust { sku, loc, d }),
        4 => (stock_sku(), stock_loc(), 0..25i64, 0..8u8).prop_map(|(sku, loc, q, compare)| Op::Set { sku, loc, q, compare }),
        2 => (stock_sku(), stock_loc(), 0..4u8, 0..4u8, 1..8i64)
            .prop_map(|(sku, loc, from, to, q)| Op::Move { sku, loc, from, to, q }),
        1 => (stock_sku(), stock_loc(), 0..4u8, 1..8i64, any::<bool>())
            .prop_map(|(sku, loc, to, q, dated)| Op::Transfer { sku, loc, to, q, dated }),
        14 => (
            prop_oneof![25 => 0..3u8, 1 => Just(3u8)],
            prop::collection::vec((0..9u8, prop_oneof![1 => Just(0i64), 30 => 1..7i64, 10 => 5..16i64]), 1..4),
            prop_oneof![10 => 0..5u8, 1 => 5..7u8],
            0..5u8,
            prop_oneof![20 => 0..7u8, 1 => Just(7u8)],
            any::<bool>()
        )
            .prop_map(|(channel, lines, ttl, ship, fill, order_ref)| Op::Reserve { channel, lines, ttl, ship, fill, order_ref }),
        2 => (res(), 0..7u8).prop_map(|(res, ttl)| Op::Extend { res, ttl }),
        9 => (res(), prop_oneof![Just(None), prop::collection::vec((0..4u8, 0..5u8), 0..3).prop_map(Some)])
            .prop_map(|(res, lines)| Op::Commit { res, lines }),
        2 => res().prop_map(|res| Op::Release { res }),
        2 => res().prop_map(|res| Op::Cancel { res }),
        8 => (res(), prop::collection::vec((any::<u8>(), 0..5u8, prop_oneof![Just(0u8), 1..4u8]), 1..3))
            .prop_map(|(res, picks)| Op::Fulfil { res, picks }),
        3 => (res(), any::<u8>(), 0..4u8, any::<bool>()).prop_map(|(res, pick, q, damaged)| Op::Return { res, pick, q, damaged }),
        3 => Just(Op::Tick),
        2 => (prop::collection::vec(any::<u8>(), 0..7), any::<bool>())
            .prop_map(|(picks, lowest_priority_first)| Op::PutRules { picks, lowest_priority_first }),
        1 => (0..4u8, 0..5u8).prop_map(|(channel, priority)| Op::PutChannel { channel, priority }),
        2 => (0..9u8).prop_map(|sku| Op::GetStock { sku }),
        2 => res().prop_map(|res| Op::GetReservation { res }),
        2 => (0..9u8, 0..4u8).prop_map(|(sku, channel)| Op::Explain { sku, channel }),
        3 => any::<u8>().prop_map(|back| Op::Repeat { back }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let advance = prop_oneof![
        12 => Just(0u64),
        4 => 1..2_000u64,
        4 => 1_000..200_000u64,
        1 => Just(25 * HOUR),
        80 => Just(0u64),
    ];
    let key = prop_oneof![8 => Just(None), 1 => (0..8u8).prop_map(Some)];
    (advance, key, prop::bool::weighted(0.3), op()).prop_map(|(advance, key, batch_break, op)| {
        Step {
            advance,
            key,
            batch_break,
            op,
        }
    })
}

/// Initial stock and, maybe, an initial rule document.
#[derive(Clone, Debug)]
struct Start {
    stock: Vec<(u8, u8, i64)>,
    rules: Option<(Vec<u8>, bool)>,
}

fn start() -> impl Strategy<Value = Start> {
    (
        prop::collection::vec((0..PLAIN as u8, 0..3u8, 1..20i64), 6..16),
        prop::option::of((prop::collection::vec(any::<u8>(), 1..7), any::<bool>())),
    )
        .prop_map(|(stock, rules)| Start { stock, rules })
}

fn ttl_of(t: u8) -> Option<u64> {
    match t % 7 {
        0 => None,
        1 => Some(1_000),
        2 => Some(5_000),
        3 => Some(30_000),
        4 => Some(120_000),
        5 => Some(HOUR),
        _ => Some(500),
    }
}

/// A count of one of the levels `pick` selects (the `q`-th), 1 to 3 units below what its
/// stock is committed to, held and set aside: an oversell incident.
fn count_short(
    model: &Model,
    q: i64,
    pick: impl Fn(&(Sku, usize), &depot_tests::model::Level) -> bool,
) -> Command {
    let hit: Vec<_> = model.levels.iter().filter(|(k, v)| pick(k, v)).collect();
    let ((s, l), v) = hit[q as usize % hit.len()];
    Command::Set {
        sku: s.clone(),
        location: model.locations[*l].0.clone(),
        quantity: (v.on_hand - v.available() - 1 - q % 3).max(0),
        compare_quantity: None,
        reason: "model".to_string(),
    }
}

fn bucket(b: u8) -> Bucket {
    [
        Bucket::Available,
        Bucket::Damaged,
        Bucket::QualityControl,
        Bucket::SafetyStock,
    ][b as usize % 4]
}

/// Turns generated steps into requests, using the model's state to pick sensible targets.
#[derive(Debug)]
struct Planner {
    /// Ids of reservations that were granted, oldest first.
    created: Vec<u64>,
    history: Vec<Request>,
}

impl Planner {
    /// A reservation to act on: mostly one `fit` for the operation, sometimes any recent one,
    /// rarely one that does not exist.
    fn res(&self, model: &Model, pick: u8, fit: impl Fn(&Reservation) -> bool) -> ReservationId {
        if pick == 255 || self.created.is_empty() {
            return ReservationId(999_999);
        }
        let fitting: Vec<u64> = self
            .created
            .iter()
            .copied()
            .filter(|id| model.reservations.get(id).is_some_and(&fit))
            .collect();
        let pool = if fitting.is_empty() || pick % 5 == 0 {
            &self.created
        } else {
            &fitting
        };
        // Recent reservations are picked more often.
        let n = pool.len();
        ReservationId(pool[n - 1 - (pick as usize % n.min(6))])
    }

    /// The operation to run: a lifecycle operation with nothing to act on becomes the one
    /// before it in the lifecycle (return -> fulfil -> commit -> reserve).
    fn effective(&self, model: &Model, now: u64, op: &Op) -> Op {
        let exists = |f: &dyn Fn(&Reservation) -> bool| {
            self.created
                .iter()
                .any(|id| model.reservations.get(id).is_some_and(f))
        };
        let allocs = |r: &Reservation, f: &dyn Fn(&depot_tests::model::Alloc) -> bool| {
            r.items.iter().flat_map(|i| &i.allocs).any(f)
        };
        let held = |r: &Reservation| r.life == Life::Held && r.expires_at > now;
        let open = |r: &Reservation| r.life == Life::Committed && allocs(r, &|a| a.open > 0);
        let shipped = |r: &Reservation| allocs(r, &|a| a.shipped > a.returned);
        match *op {
            Op::Return { res, pick, .. } if res != 255 && !exists(&shipped) => self.effective(
                model,
                now,
                &Op::Fulfil {
                    res,
                    picks: vec![(pick, 4, pick % 2)],
                },
            ),
            Op::Fulfil { res, .. } | Op::Cancel { res } if res != 255 && !exists(&open) => self
                .effective(
                    model,
                    now,
                    &Op::Commit {
                        res,
                        lines: (res % 2 == 0).then(|| vec![(0, 1 + res % 3)]),
                    },
                ),
            Op::Commit { res, .. } | Op::Extend { res, .. } | Op::Release { res }
                if res != 255 && !exists(&held) =>
            {
                Op::Reserve {
                    channel: res % 3,
                    lines: vec![(res % 8, 1 + i64::from(res % 3))],
                    ttl: res % 5,
                    ship: res % 5,
                    fill: res % 7,
                    order_ref: false,
                }
            }
            _ => op.clone(),
        }
    }

    fn request(&self, model: &Model, now: u64, s: &Step) -> Request {
        let held = |r: &Reservation| r.life == Life::Held && r.expires_at > now;
        let committed = |r: &Reservation| r.life == Life::Committed;
        let op = self.effective(model, now, &s.op);
        let r = |c: Command| Request {
            idempotency_key: s.key.map(|k| format!("key-{k}")),
            ..req(c)
        };
        let reason = || "model".to_string();
        let cmd = match &op {
            Op::Repeat { back } if !self.history.is_empty() => {
                // Mostly a request that carried a key, to exercise idempotent replays.
                let keyed: Vec<&Request> = self
                    .history
                    .iter()
                    .filter(|r| r.idempotency_key.is_some())
                    .collect();
                if back % 4 != 0 && !keyed.is_empty() {
                    return keyed[keyed.len() - 1 - (*back as usize % keyed.len().min(4))].clone();
                }
                return self.history
                    [self.history.len() - 1 - (*back as usize % self.history.len().min(8))]
                .clone();
            }
            Op::Repeat { .. } | Op::Tick => Command::Tick,
            Op::Receive { sku: k, loc: l, q } => Command::Receive {
                sku: sku(SKUS[*k as usize]),
                location: loc(LOCS[*l as usize]),
                quantity: *q,
                unit_cost: None,
                reason: reason(),
            },
            Op::Expect {
                sku: k,
                loc: l,
                q,
                dated,
            } => Command::Expect {
                sku: sku(SKUS[*k as usize]),
                location: loc(LOCS[*l as usize]),
                quantity: *q,
                expected_at: dated.then_some(now + 24 * HOUR),
                reason: reason(),
            },
            Op::Adjust { sku: k, loc: l, d } => Command::Adjust {
                sku: sku(SKUS[*k as usize]),
                location: loc(LOCS[*l as usize]),
                delta: *d,
                reason: reason(),
            },
            Op::Set {
                q, compare: 5.., ..
            } if model.levels.values().any(|v| v.committed > 0) => {
                // A count below what is committed where the most orders are committed: an
                // oversell incident whose victims the oversell policy orders.
                let orders = |s: &Sku, l: usize| {
                    model
                        .reservations
                        .values()
                        .filter(|r| r.life == Life::Committed)
                        .filter(|r| {
                            r.items.iter().any(|i| {
                                &i.sku == s && i.allocs.iter().any(|a| a.loc == l && a.open > 0)
                            })
                        })
                        .count()
                };
                let most = model
                    .levels
                    .keys()
                    .map(|(s, l)| orders(s, *l))
                    .max()
                    .unwrap_or(0);
                count_short(model, *q, |(s, l), v| {
                    v.committed > 0 && orders(s, *l) == most
                })
            }
            Op::Set { q, compare: 4, .. } if model.levels.values().any(|v| v.reserved > 0) => {
                // A count below what is held: the holds stay (they are not orders), and
                // committing one of them later must not commit units that are not there.
                count_short(model, *q, |_, v| v.reserved > 0)
            }
            Op::Set {
                sku: k,
                loc: l,
                q,
                compare,
            } => {
                let s = sku(SKUS[*k as usize]);
                let current = model
                    .loc_idx(&loc(LOCS[*l as usize]))
                    .and_then(|i| model.levels.get(&(s.clone(), i)))
                    .map_or(0, |v| v.on_hand);
                let compare_quantity = match compare {
                    2 => Some(current),
                    3 => Some(current + 1),
                    _ => None,
                };
                // Mode 4 and up: a count a few units short of what is on hand.
                let quantity = if *compare >= 4 {
                    (current - q % 6).max(0)
                } else {
                    *q
                };
                Command::Set {
                    sku: s,
                    location: loc(LOCS[*l as usize]),
                    quantity,
                    compare_quantity,
                    reason: reason(),
                }
            }
            Op::Move {
                sku: k,
                loc: l,
                from,
                to,
                q,
            } => Command::Move {
                sku: sku(SKUS[*k as usize]),
                location: loc(LOCS[*l as usize]),
                from: bucket(*from),
                to: bucket(*to),
                quantity: *q,
                reason: reason(),
            },
            Op::Transfer {
                sku: k,
                loc: l,
                to,
                q,
                dated,
            } => Command::Transfer {
                sku: sku(SKUS[*k as usize]),
                location: loc(LOCS[*l as usize]),
                to_location: loc(LOCS[*to as usize]),
                quantity: *q,
                expected_at: dated.then_some(now + 48 * HOUR),
                reason: reason(),
            },
            Op::Reserve {
                channel,
                lines,
                ttl,
                ship,
                fill,
                order_ref,
            } => Command::Reserve {
                channel: ch(CHANNELS[*channel as usize]),
                lines: {
                    // Distinct SKUs, unless the first two lines name the same one on purpose.
                    let mut out: Vec<LineRequest> = Vec::new();
                    for (i, &(k, q)) in lines.iter().enumerate() {
                        let s = sku(SKUS[k as usize]);
                        if i == 1 && q == 6 || !out.iter().any(|l| l.sku == s) {
                            out.push(LineRequest {
                                sku: s,
                                quantity: q,
                            });
                        }
                    }
                    out
                },
                ttl_ms: ttl_of(*ttl),
                order_ref: order_ref.then(|| "order-1".to_string()),
                ship_to_region: Some(REGIONS[*ship as usize])
                    .filter(|r| !r.is_empty())
                    .map(str::to_string),
                fill: match fill {
                    0..=2 => FillPolicy::AllOrNothing,
                    3 | 4 => FillPolicy::Partial,
                    5 => FillPolicy::Split { max_locations: 1 },
                    6 => FillPolicy::Split { max_locations: 2 },
                    _ => FillPolicy::Split { max_locations: 0 },
                },
            },
            Op::Extend { res, ttl } => Command::Extend {
                id: self.res(model, *res, held),
                ttl_ms: ttl_of(*ttl).unwrap_or(60_000),
            },
            Op::Commit { res, lines } => {
                let id = self.res(model, *res, held);
                let skus: Vec<Sku> = model
                    .reservations
                    .get(&id.0)
                    .map(|r| r.lines.iter().map(|l| l.sku.clone()).collect())
                    .unwrap_or_default();
                let lines = lines.as_ref().map(|ls| {
                    ls.iter()
                        .map(|&(p, q)| CommitLine {
                            sku: skus.get(p as usize).cloned().unwrap_or_else(|| sku("Z-9")),
                            quantity: match q {
                                0 => None,
                                4 => Some(0),
                                q => Some(i64::from(q)),
                            },
                        })
                        .collect()
                });
                Command::Commit { id, lines }
            }
            Op::Release { res } => Command::Release {
                id: self.res(model, *res, held),
            },
            Op::Cancel { res } => Command::Cancel {
                id: self.res(model, *res, committed),
            },
            Op::Fulfil { res, picks } => {
                let id = self.res(model, *res, |r| {
                    committed(r) && r.items.iter().flat_map(|i| &i.allocs).any(|a| a.open > 0)
                });
                // (sku, location index, open units) of every allocation, in item order.
                let mut allocs: Vec<(Sku, usize, i64)> = Vec::new();
                if let Some(r) = model.reservations.get(&id.0) {
                    for it in &r.items {
                        for a in &it.allocs {
                            match allocs
                                .iter_mut()
                                .find(|(s, l, _)| *s == it.sku && *l == a.loc)
                            {
                                Some(x) => x.2 += a.open,
                                None => allocs.push((it.sku.clone(), a.loc, a.open)),
                            }
                        }
                    }
                }
                let mut seen = Vec::new();
                let lines = picks
                    .iter()
                    .filter(|&&(p, _, _)| {
                        let i = p as usize % allocs.len().max(1);
                        let fresh = !seen.contains(&i);
                        seen.push(i);
                        fresh || p % 7 == 0
                    })
                    .map(|&(p, f, m)| {
                        let Some((s, l, open)) =
                            allocs.get(p as usize % allocs.len().max(1)).cloned()
                        else {
                            return FulfilLine {
                                sku: sku("A-1"),
                                location: loc("l1"),
                                quantity: 1,
                                missing: 0,
                            };
                        };
                        let quantity = open * i64::from(f) / 4;
                        let missing = (open - quantity).min(i64::from(m));
                        let quantity = if quantity + missing == 0 { 1 } else { quantity };
                        FulfilLine {
                            sku: s,
                            location: model.locations[l].0.clone(),
                            quantity,
                            missing,
                        }
                    })
                    .collect();
                Command::Fulfil { id, lines }
            }
            Op::Return {
                res,
                pick,
                q,
                damaged,
            } => {
                let id = self.res(model, *res, |r| {
                    r.items
                        .iter()
                        .flat_map(|i| &i.allocs)
                        .any(|a| a.shipped > a.returned)
                });
                let mut shipped: Vec<(Sku, usize)> = Vec::new();
                if let Some(r) = model.reservations.get(&id.0) {
                    for it in &r.items {
                        for a in it.allocs.iter().filter(|a| a.shipped > a.returned) {
                            shipped.push((it.sku.clone(), a.loc));
                        }
                    }
                }
                let (s, l) = shipped
                    .get(*pick as usize % shipped.len().max(1))
                    .cloned()
                    .unwrap_or((sku("A-1"), 0));
                Command::Return {
                    id,
                    sku: s,
                    location: model.locations[l].0.clone(),
                    quantity: i64::from(*q),
                    damaged: *damaged,
                    reason: reason(),
                }
            }
            Op::PutRules {
                picks,
                lowest_priority_first,
            } => Command::PutRules {
                document: rules_document(picks, *lowest_priority_first),
            },
            Op::PutChannel { channel, priority } => Command::PutChannel {
                channel: ch(CHANNELS[*channel as usize]),
                kind: ChannelKind::Other,
                priority: [0, 1, 5, 10, 20][*priority as usize],
            },
            Op::GetStock { sku: k } => Command::GetStock {
                sku: sku(SKUS[*k as usize]),
            },
            Op::GetReservation { res } => Command::GetReservation {
                id: self.res(model, *res, |_| true),
            },
            Op::Explain { sku: k, channel } => Command::Explain {
                sku: sku(SKUS[*k as usize]),
                channel: ch(CHANNELS[*channel as usize]),
            },
        };
        r(cmd)
    }

    /// Records a request and the model's answer to it.
    fn record(&mut self, request: &Request, answer: &Answer) {
        if let (Command::Reserve { .. }, Some(seq), false, true) = (
            &request.command,
            answer.seq,
            answer.replayed,
            answer.is_ok(),
        ) {
            self.created.push(seq);
        }
        if !request.command.is_read() {
            self.history.push(request.clone());
        }
    }
}

/// Every request of a generated case, with the time it runs at and whether a new engine batch
/// starts there, as planned against the model.
fn plan(start: &Start, steps: &[Step]) -> Vec<(u64, Request, bool)> {
    let mut model = Model::new(Limits::default());
    let mut planner = Planner {
        created: Vec::new(),
        history: Vec::new(),
    };
    let mut out = Vec::new();
    let mut now = T0;
    for c in setup_requests(start) {
        let a = model.execute(&c, now);
        planner.record(&c, &a);
        out.push((now, c, true));
    }
    for s in steps {
        now += s.advance;
        let r = planner.request(&model, now, s);
        let a = model.execute(&r, now);
        planner.record(&r, &a);
        out.push((now, r, s.batch_break));
    }
    out
}

fn setup_requests(start: &Start) -> Vec<Request> {
    let mut out: Vec<Request> = setup_commands().into_iter().map(req).collect();
    if let Some((picks, lpf)) = &start.rules {
        out.push(req(Command::PutRules {
            document: rules_document(picks, *lpf),
        }));
    }
    for &(k, l, q) in &start.stock {
        out.push(req(Command::Receive {
            sku: sku(SKUS[k as usize]),
            location: loc(LOCS[l as usize]),
            quantity: q,
            unit_cost: None,
            reason: "initial".into(),
        }));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// the model test

struct Check {
    model: Model,
    machine: Machine,
    planner: Planner,
    /// The engine's stock views after the previous step.
    stock: BTreeMap<Sku, StockView>,
    step: usize,
}

impl Check {
    fn engine_read(&mut self, c: Command, now: u64) -> Answer {
        observe(&self.machine.execute(&req(c), now).0)
    }

    fn run(&mut self, r: &Request, now: u64) -> Result<(), TestCaseError> {
        self.step += 1;
        let (resp, _, _) = self.machine.execute(r, now);
        let got = observe(&resp);
        let want = self.model.execute(r, now);
        prop_assert_eq!(
            &got,
            &want,
            "step {}: answers differ for {:?}",
            self.step,
            r
        );
        self.planner.record(r, &want);
        // The whole state: every SKU's stock view and every reservation's view.
        let mut stock = BTreeMap::new();
        for s in SKUS {
            let s = sku(s);
            let got = self.engine_read(Command::GetStock { sku: s.clone() }, now);
            let want = self
                .model
                .execute(&req(Command::GetStock { sku: s.clone() }), now)
                .obs;
            prop_assert_eq!(
                &got.obs,
                &want,
                "step {}: stock of {} differs after {:?}",
                self.step,
                s,
                r
            );
            if let Obs::Stock(v) = got.obs {
                stock.insert(s, v);
            }
        }
        for id in self.planner.created.clone() {
            let got = self.engine_read(
                Command::GetReservation {
                    id: ReservationId(id),
                },
                now,
            );
            let want = self
                .model
                .execute(
                    &req(Command::GetReservation {
                        id: ReservationId(id),
                    }),
                    now,
                )
                .obs;
            prop_assert_eq!(
                &got.obs,
                &want,
                "step {}: reservation {} differs after {:?}",
                self.step,
                id,
                r
            );
        }
        self.invariants(r, &stock)?;
        self.stock = stock;
        Ok(())
    }

    /// The invariants of the issue, checked on the engine's views.
    fn invariants(
        &self,
        r: &Request,
        stock: &BTreeMap<Sku, StockView>,
    ) -> Result<(), TestCaseError> {
        let m = &self.model;
        let counted = match &r.command {
            Command::Set { sku, location, .. } => Some((sku.clone(), location.clone())),
            _ => None,
        };
        for s in &SKUS[..PLAIN] {
            let s = sku(s);
            let view = &stock[&s];
            let before = self.stock.get(&s);
            let mut any_negative = false;
            let (mut held, mut sellable) = (0, 0);
            for lv in &view.locations {
                // Available is never made negative, except by a count.
                let prev = before
                    .and_then(|b| b.locations.iter().find(|p| p.location == lv.location))
                    .map_or(0, |p| p.available);
                let by_count = counted.as_ref() == Some(&(s.clone(), lv.location.clone()));
                prop_assert!(
                    by_count || lv.available >= prev.min(0),
                    "step {}: available of {} at {} went from {} to {} by {:?}",
                    self.step,
                    s,
                    lv.location,
                    prev,
                    lv.available,
                    r
                );
                prop_assert_eq!(
                    lv.available,
                    lv.on_hand
                        - lv.reserved
                        - lv.committed
                        - lv.damaged
                        - lv.quality_control
                        - lv.safety_stock
                );
                // Nothing ships units that are not there: on hand never goes below zero, and
                // committed units (orders awaiting pick) are always physically on hand, after a
                // count too (what a count leaves uncovered is backordered).
                prop_assert!(
                    lv.on_hand >= 0
                        && (lv.committed == 0
                            || lv.committed + lv.damaged + lv.quality_control <= lv.on_hand),
                    "step {}: {} at {}: on_hand {}, committed {}, damaged {}, quality_control {} after {:?}",
                    self.step,
                    s,
                    lv.location,
                    lv.on_hand,
                    lv.committed,
                    lv.damaged,
                    lv.quality_control,
                    r
                );
                any_negative |= lv.available < 0;
                held += lv.reserved + lv.committed;
                sellable += lv.on_hand - lv.damaged - lv.quality_control - lv.safety_stock;
                // Reserved and committed units are exactly the open units of live reservations.
                let li = m.loc_idx(&lv.location).expect("known location");
                let open = |life: Life| -> i64 {
                    m.reservations
                        .values()
                        .filter(|x| x.life == life)
                        .flat_map(|x| &x.items)
                        .filter(|i| i.sku == s)
                        .flat_map(|i| &i.allocs)
                        .filter(|a| a.loc == li)
                        .map(|a| a.open)
                        .sum()
                };
                prop_assert_eq!(
                    lv.reserved,
                    open(Life::Held),
                    "step {}: reserved of {} at {}",
                    self.step,
                    s,
                    lv.location
                );
                prop_assert_eq!(
                    lv.committed,
                    open(Life::Committed),
                    "step {}: committed of {} at {}",
                    self.step,
                    s,
                    lv.location
                );
            }
            // What the channels hold never exceeds the stock.
            let by_channel: i64 = (0..m.channels.len()).map(|c| m.held(&s, c)).sum();
            prop_assert_eq!(by_channel, held);
            if !any_negative {
                prop_assert!(
                    held <= sellable,
                    "step {}: {} held of {} sellable {}",
                    self.step,
                    held,
                    s,
                    sellable
                );
            }
            // Every channel's ATS within its rules.
            for (c, ats) in view.channels.iter().enumerate() {
                let a = ats.available_to_sell;
                prop_assert!(a >= 0);
                if any_negative {
                    prop_assert_eq!(
                        a,
                        0,
                        "step {}: ATS of {} on {} during an incident",
                        self.step,
                        s,
                        ats.channel
                    );
                }
                let pool: i64 = view
                    .locations
                    .iter()
                    .filter(|lv| m.eligible(&s, c, m.loc_idx(&lv.location).unwrap()))
                    .map(|lv| lv.available)
                    .sum();
                prop_assert!(
                    a <= pool.max(0),
                    "step {}: ATS {} of {} on {} above pool {}",
                    self.step,
                    a,
                    s,
                    ats.channel,
                    pool
                );
                if let Some(RuleKind::Cap { units }) = m.cap_rule(&s, c).map(|r| &r.kind) {
                    prop_assert!(a <= *units);
                }
                if let Some(RuleKind::Scarcity {
                    threshold,
                    min_priority,
                }) = m.scarcity_rule(&s, c).map(|r| &r.kind)
                {
                    let total: i64 = view.locations.iter().map(|lv| lv.available).sum();
                    if total <= *threshold && m.channels[c].1 < *min_priority {
                        prop_assert_eq!(a, 0);
                    }
                }
                // A channel's ATS never counts units fenced for another channel.
                let sellable_all: i64 = view
                    .locations
                    .iter()
                    .map(|lv| lv.on_hand - lv.damaged - lv.quality_control - lv.safety_stock)
                    .sum();
                for (d, (other, _)) in m.channels.iter().enumerate() {
                    let smallest = m
                        .rules
                        .rules
                        .iter()
                        .filter(|rule| rule_matches_sku(rule, &s))
                        .filter_map(|rule| match &rule.kind {
                            RuleKind::RingFence {
                                channel,
                                units,
                                percent,
                            } if channel == other && d != c => Some(units.unwrap_or_else(|| {
                                sellable_all * i64::from(percent.unwrap_or(0)) / 100
                            })),
                            _ => None,
                        })
                        .min();
                    if let Some(size) = smallest {
                        let fenced = (size - m.held(&s, d)).max(0);
                        prop_assert!(
                            a <= (pool - fenced).max(0),
                            "step {}: ATS {} of {} on {} ignores the fence of {}",
                            self.step,
                            a,
                            s,
                            ats.channel,
                            other
                        );
                    }
                }
            }
        }
        // A bundle's ATS is what its components allow.
        for b in ["KIT-1", "KIT-2"] {
            let b = sku(b);
            let view = &stock[&b];
            for (c, ats) in view.channels.iter().enumerate() {
                let least = view
                    .components
                    .iter()
                    .map(|k| stock[&k.sku].channels[c].available_to_sell / k.quantity)
                    .min()
                    .unwrap_or(0);
                prop_assert_eq!(ats.available_to_sell, least);
            }
        }
        Ok(())
    }
}

/// `default` cases per property, or `PROPTEST_CASES` when it is set: a soak runs the model
/// tests with many more (`PROPTEST_CASES=20000 cargo test --release --test model`).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    // About a second in the test profile: cheap enough for many cases.
    #![proptest_config(ProptestConfig { cases: cases(256), max_shrink_iters: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_reference_model(
        shards in 1..5usize,
        start in start(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let mut check = Check {
            model: Model::new(Limits::default()),
            machine: Machine::new(Limits::default(), shards),
            planner: Planner { created: Vec::new(), history: Vec::new() },
            stock: BTreeMap::new(),
            step: 0,
        };
        let mut now = T0;
        for r in setup_requests(&start) {
            check.run(&r, now)?;
        }
        for s in &steps {
            now += s.advance;
            let r = check.planner.request(&check.model, now, s);
            check.run(&r, now)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the replay test

/// `Limits::combine_percent` that never combines a batch.
const NEVER: u32 = 101;

fn first_difference(a: &[String], b: &[String]) -> String {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            return format!("line {i}:\n  {x}\n  {y}");
        }
    }
    format!("lengths {} and {}", a.len(), b.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), max_shrink_iters: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn recorded_sequences_replay_to_the_same_digest(
        start in start(),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let requests = plan(&start, &steps);
        // The threaded engine, in batches, answers exactly as the single-threaded machine:
        // with every batch on the shard threads, with small batches run by the submitting
        // thread, with all of them run so, and with every batch touching several shards run
        // combined on one shard thread (alone, or mixed with batches of one shard and small
        // batches run inline).
        let mut batches: Vec<(u64, Vec<Request>)> = Vec::new();
        for (now, r, brk) in &requests {
            match batches.last_mut() {
                Some((t, b)) if t == now && !brk => b.push(r.clone()),
                _ => batches.push((*now, vec![r.clone()])),
            }
        }
        let mut by_seq = BTreeMap::new();
        let mut entries: Vec<LogEntry> = Vec::new();
        let mut machine = Machine::new(Limits::default(), 1);
        let mut digest = [0u8; 32];
        for (inline, combine) in [(0, NEVER), (4, NEVER), (usize::MAX, NEVER), (0, 0), (2, 30)] {
            let journal = MemoryJournal::default();
            let limits = Limits { inline_tasks_max: inline, combine_percent: combine, ..Limits::default() };
            let engine = Engine::start_with(EngineConfig { shards: 3, limits }, Some(std::sync::Arc::new(journal.clone())));
            machine = Machine::new(Limits::default(), 1);
            let mut i = 0;
            for (now, batch) in &batches {
                let answers = engine.execute(batch.clone(), *now);
                prop_assert_eq!(answers.len(), batch.len());
                for (r, (resp, events)) in batch.iter().zip(answers) {
                    let (want, want_events, _) = machine.execute(r, *now);
                    prop_assert_eq!(&resp, &want, "request {} (inline up to {}, combined from {}%): {:?}", i, inline, combine, r);
                    prop_assert_eq!(&events, &want_events, "request {} (inline up to {}, combined from {}%): events of {:?}", i, inline, combine, r);
                    if let (Some(seq), false, 0, NEVER) = (resp.seq, resp.replayed, inline, combine) {
                        by_seq.insert(seq, resp.clone());
                    }
                    i += 1;
                }
            }
            digest = engine.digest();
            prop_assert!(machine.digest() == digest, "engine (inline up to {}, combined from {}%) and machine differ: {}", inline, combine, first_difference(&engine.canonical(), &machine.canonical()));
            let logged = journal.entries.lock().unwrap().clone();
            if (inline, combine) == (0, NEVER) {
                entries = logged;
            } else {
                prop_assert!(logged == entries, "the same log with inline up to {}, combined from {}%", inline, combine);
            }
        }

        // The image serialized straight from the tables is the owned image's bytes.
        let streamed = serialize_state_into(&machine.state_image(), AlignedBytes::new()).expect("serializes");
        prop_assert!(streamed[..] == to_bytes(&machine.image())[..], "the image from the tables differs from the owned image");
        // It loads into the same state: answers stored by reference to their reservations
        // are built again as they were.
        let loaded = load(&from_bytes(&streamed).expect("reads"), Limits::default(), 3).expect("loads");
        prop_assert!(loaded.digest() == digest, "the loaded image differs: {}", first_difference(&loaded.canonical(), &machine.canonical()));

        // Replaying the journal rebuilds the same state on any number of shards.
        prop_assert_eq!(entries.len(), by_seq.len(), "one journal entry per sequenced write");
        for shards in [1, 4] {
            let mut fresh = Machine::new(Limits::default(), shards);
            for e in &entries {
                let (resp, _) = fresh.replay(e);
                prop_assert_eq!(Some(&resp), by_seq.get(&e.seq), "replay of seq {} on {} shards", e.seq, shards);
            }
            prop_assert!(
                fresh.digest() == digest,
                "replay on {} shards differs: {}",
                shards,
                first_difference(&fresh.canonical(), &machine.canonical())
            );
            // Reservations in parts on several shards, too.
            let streamed = serialize_state_into(&fresh.state_image(), AlignedBytes::new()).expect("serializes");
            prop_assert!(streamed[..] == to_bytes(&fresh.image())[..], "the image from the tables differs on {} shards", shards);
        }

        // And on the shard threads, as recovery replays: batches of several sizes, the next
        // one submitted before the last one's answers are collected.
        // Quietly (answers of unkeyed reservations not built), the state is the same.
        // Batches combined on one shard thread (`combine` 0) too.
        for (shards, size, quiet, combine) in [(1, 1, false, NEVER), (2, 3, false, NEVER), (3, 7, true, NEVER), (4, 4096, false, NEVER), (2, 4096, true, NEVER), (3, 5, false, 0), (2, 4096, true, 0)] {
            let limits = Limits { combine_percent: combine, ..Limits::default() };
            let engine = Engine::from_machine(Machine::new(limits.clone(), shards), limits, None);
            let mut in_flight: Option<(&[LogEntry], depot_engine::Replaying)> = None;
            let mut answers = Vec::new();
            for chunk in entries.chunks(size) {
                let next = engine.replay_submit(chunk, quiet);
                if let Some((done, running)) = in_flight.replace((chunk, next)) {
                    answers.extend(done.iter().zip(engine.replay_wait(running)).map(|(e, (r, _))| (e.seq, r)));
                }
            }
            if let Some((done, running)) = in_flight.take() {
                answers.extend(done.iter().zip(engine.replay_wait(running)).map(|(e, (r, _))| (e.seq, r)));
            }
            for (seq, resp) in answers.iter().filter(|_| !quiet) {
                prop_assert_eq!(Some(resp), by_seq.get(seq), "threaded replay of seq {} on {} shards", seq, shards);
            }
            let fresh = engine.into_machine();
            prop_assert!(
                fresh.digest() == digest,
                "threaded replay on {} shards in batches of {} (quiet: {}) differs: {}",
                shards,
                size,
                quiet,
                first_difference(&fresh.canonical(), &machine.canonical())
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the generator itself

/// The model test only means something if the generated sequences reach every part of the
/// lifecycle: a fixed-seed sample of cases must produce each of these events and answers.
#[test]
fn generated_sequences_reach_every_part_of_the_lifecycle() {
    use depot_tests::model::Refused;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let case = (start(), prop::collection::vec(step(), 40..80));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..64 {
        let (start, steps) = case.new_tree(&mut runner).unwrap().current();
        let mut machine = Machine::new(Limits::default(), 3);
        for (now, r, _) in plan(&start, &steps) {
            let (resp, events, _) = machine.execute(&r, now);
            let mut note = |k: String| *seen.entry(k).or_default() += 1;
            for e in events {
                let kind = format!("{:?}", e.kind);
                note(
                    kind.split([' ', '{', '('])
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            if resp.replayed {
                note("replayed".into());
            }
            match observe(&resp).obs {
                Obs::Refused(Refused::InsufficientStock(_)) => note("insufficient_stock".into()),
                Obs::Refused(Refused::CompareFailed { .. }) => note("compare_failed".into()),
                Obs::Refused(Refused::IdempotencyKeyReused) => {
                    note("idempotency_key_reused".into())
                }
                Obs::Reservation(v) => note(format!("{:?}", v.state)),
                Obs::Ticked { dropped, .. } if dropped > 0 => note("dropped".into()),
                _ => {}
            }
        }
    }
    let required = [
        "ReservationHeld",
        "ReservationCommitted",
        "ReservationExtended",
        "ReservationReleased",
        "ReservationExpired",
        "ReservationCancelled",
        "Fulfilled",
        "Discrepancy",
        "Reallocated",
        "Backordered",
        "Returned",
        "OversellIncident",
        "RulesPut",
        "replayed",
        "insufficient_stock",
        "compare_failed",
        "idempotency_key_reused",
        "dropped",
        "Held",
        "Committed",
    ];
    for r in required {
        assert!(
            seen.get(r).copied().unwrap_or(0) > 0,
            "no generated case produced {r}: {seen:?}"
        );
    }
}
