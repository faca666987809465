//! The demo tenant of `depot serve --demo`: a small merchant with two warehouses and an
//! Amazon FBA stock, five channels, a rule document using every rule kind, 300 SKUs with
//! stock and unit costs, and one bundle. Everything is deterministic (no randomness, no
//! clock), so the demo's numbers are the same on every machine and in the README.
//!
//! What the rules imply for `DEMO-MUG` (east 120, west 60, fba-us 30; nothing held):
//! shopify 160 (180 in the warehouses, minus b2b's 20-unit ring-fence), amazon 190 (FBA stock
//! too), ebay 144 (160 minus a 10% buffer), b2b 180 (its own fence is its own), agent 5 (cap).

use depot_engine::config::ChannelKind;
use depot_engine::rules::{Routing, Rule, RuleDocument, RuleKind};
use depot_engine::{
    ChannelId, Command, Component, LocationId, LocationKind, Request, Sku, TenantId,
};
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// The key id recorded in the demo's events.
pub const DEMO_KEY_ID: &str = "demo";
/// SKUs created, the two named ones included.
pub const DEMO_SKUS: usize = 300;
/// The bundle: 2 x `DEMO-MUG` + 1 x `DEMO-TEA`.
pub const DEMO_BUNDLE: &str = "DEMO-GIFTBOX";

const EAST: &str = "wh-east";
const WEST: &str = "wh-west";
const FBA: &str = "fba-us";
const SHOPIFY: &str = "shopify:demo";
const AMAZON: &str = "amazon:us";
const EBAY: &str = "ebay:us";
const B2B: &str = "b2b";
const AGENT: &str = "agent";

/// Every request that sets up the demo tenant, in order. Each is expected to succeed on an
/// engine where `tenant` does not exist yet.
pub fn demo_requests(tenant: &TenantId) -> Vec<Request> {
    let mut commands = vec![Command::CreateTenant];
    commands.extend(locations());
    commands.extend(channels());
    commands.push(Command::PutRules {
        document: rule_document(),
    });
    commands.extend(stock());
    commands.push(Command::PutBundle {
        sku: sku(DEMO_BUNDLE),
        components: vec![
            Component {
                sku: sku("DEMO-MUG"),
                quantity: 2,
            },
            Component {
                sku: sku("DEMO-TEA"),
                quantity: 1,
            },
        ],
    });
    commands
        .into_iter()
        .map(|command| Request {
            tenant: tenant.clone(),
            key_id: DEMO_KEY_ID.into(),
            idempotency_key: None,
            command,
        })
        .collect()
}

// The ids below are constants of this file, checked by its tests: `new` cannot fail on them.
fn sku(s: &str) -> Sku {
    Sku::new(s).expect("a valid demo SKU")
}
fn loc(s: &str) -> LocationId {
    LocationId::new(s).expect("a valid demo location")
}
fn chan(s: &str) -> ChannelId {
    ChannelId::new(s).expect("a valid demo channel")
}

fn locations() -> Vec<Command> {
    let put = |id: &str, kind, name: &str, region: &str, wms: Option<&str>| Command::PutLocation {
        location: loc(id),
        kind,
        name: name.to_string(),
        region: Some(region.to_string()),
        wms: wms.map(str::to_string),
    };
    vec![
        put(
            EAST,
            LocationKind::Warehouse,
            "East warehouse (Newark)",
            "us-east",
            Some("demo-wms"),
        ),
        put(
            WEST,
            LocationKind::Warehouse,
            "West warehouse (Reno)",
            "us-west",
            Some("demo-wms"),
        ),
        put(
            FBA,
            LocationKind::ChannelFulfilled,
            "Amazon FBA US",
            "us-central",
            None,
        ),
    ]
}

fn channels() -> Vec<Command> {
    [
        (SHOPIFY, ChannelKind::Shopify, 100),
        (AMAZON, ChannelKind::Amazon, 80),
        (B2B, ChannelKind::B2b, 70),
        (EBAY, ChannelKind::Ebay, 50),
        (AGENT, ChannelKind::Agent, 10),
    ]
    .into_iter()
    .map(|(id, kind, priority)| Command::PutChannel {
        channel: chan(id),
        kind,
        priority,
    })
    .collect()
}

fn rule(id: &str, kind: RuleKind) -> Rule {
    Rule {
        id: Some(id.to_string()),
        kind,
        ..Rule::default()
    }
}

/// One rule of every kind, with each kind of target.
fn rule_document() -> RuleDocument {
    let regions: BTreeMap<String, Vec<String>> = [
        ("us-east", ["us-east", "us-central", "us-west"]),
        ("us-west", ["us-west", "us-central", "us-east"]),
    ]
    .into_iter()
    .map(|(r, order)| (r.to_string(), order.map(str::to_string).to_vec()))
    .collect();
    let rules = vec![
        Rule {
            except_channels: Some(vec![chan(AMAZON)]),
            ..rule(
                "fba-only-amazon",
                RuleKind::Eligibility {
                    locations: None,
                    deny_locations: Some(vec![loc(FBA)]),
                },
            )
        },
        Rule {
            sku_prefix: Some("DEMO-MUG".into()),
            ..rule(
                "b2b-mugs",
                RuleKind::RingFence {
                    channel: chan(B2B),
                    units: Some(20),
                    percent: None,
                },
            )
        },
        Rule {
            channels: Some(vec![chan(EBAY)]),
            ..rule(
                "ebay-sync-lag",
                RuleKind::Buffer {
                    units: None,
                    percent: Some(10),
                },
            )
        },
        Rule {
            channels: Some(vec![chan(AGENT)]),
            ..rule("agent-cap", RuleKind::Cap { units: 5 })
        },
        Rule {
            channels: Some(vec![chan(AMAZON)]),
            skus: Some(vec![sku("DEMO-TEA")]),
            ..rule("amazon-tea-cap", RuleKind::Cap { units: 50 })
        },
        rule(
            "last-units-for-priority",
            RuleKind::Scarcity {
                threshold: 10,
                min_priority: 50,
            },
        ),
        rule(
            "east-first",
            RuleKind::Routing(Routing::Priority {
                locations: vec![loc(EAST), loc(WEST)],
            }),
        ),
        Rule {
            channels: Some(vec![chan(SHOPIFY)]),
            ..rule("ship-near", RuleKind::Routing(Routing::Nearest { regions }))
        },
    ];
    RuleDocument {
        version: 0,
        oversell_policy: Default::default(),
        rules,
    }
}

/// (SKU, units at east, west, fba-us, unit cost in cents) of every demo SKU.
fn catalogue() -> Vec<(String, i64, i64, i64, i64)> {
    let mut out = vec![
        ("DEMO-MUG".to_string(), 120, 60, 30, 450),
        ("DEMO-TEA".to_string(), 80, 40, 0, 299),
    ];
    for n in 1..=(DEMO_SKUS as i64 - 2) {
        let east = 10 + (n * 37) % 190;
        let west = (n * 53) % 150;
        let fba = if n % 3 == 0 { 5 + (n * 11) % 40 } else { 0 };
        let cost = 199 + (n * 131) % 4_800;
        out.push((format!("DEMO-{n:04}"), east, west, fba, cost));
    }
    out
}

fn stock() -> Vec<Command> {
    let mut out = Vec::new();
    for (s, east, west, fba, cents) in catalogue() {
        for (l, q) in [(EAST, east), (WEST, west), (FBA, fba)] {
            if q > 0 {
                out.push(Command::Receive {
                    sku: sku(&s),
                    location: loc(l),
                    quantity: q,
                    unit_cost: Some(Decimal::new(cents, 2)),
                    reason: "demo: opening stock".to_string(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_engine::{Engine, EngineConfig, Outcome, Reply};

    const NOW_MS: u64 = 1_700_000_000_000;

    fn ats(engine: &Engine, tenant: &TenantId, s: &str) -> BTreeMap<String, i64> {
        let answer = engine.execute_one(
            Request {
                tenant: tenant.clone(),
                key_id: "test".into(),
                idempotency_key: None,
                command: Command::GetStock { sku: sku(s) },
            },
            NOW_MS,
        );
        let Outcome::Ok(Reply::Stock(view)) = answer.0.outcome else {
            panic!("stock of {s}: {:?}", answer.0.outcome);
        };
        view.channels
            .into_iter()
            .map(|c| (c.channel.to_string(), c.available_to_sell))
            .collect()
    }

    #[test]
    fn every_demo_request_succeeds_and_the_rules_shape_the_ats() {
        let tenant = TenantId::new("demo").unwrap();
        let requests = demo_requests(&tenant);
        let receives = requests
            .iter()
            .filter(|r| matches!(r.command, Command::Receive { .. }))
            .count();
        assert!(receives >= DEMO_SKUS, "{receives} receipts");
        let engine = Engine::start(EngineConfig::default());
        for (i, (response, _)) in engine.execute(requests, NOW_MS).into_iter().enumerate() {
            assert!(
                response.outcome.is_ok(),
                "request {i}: {:?}",
                response.outcome
            );
        }
        let expect = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
            pairs.iter().map(|(c, n)| (c.to_string(), *n)).collect()
        };
        assert_eq!(
            ats(&engine, &tenant, "DEMO-MUG"),
            expect(&[
                (SHOPIFY, 160),
                (AMAZON, 190),
                (B2B, 180),
                (EBAY, 144),
                (AGENT, 5)
            ])
        );
        // TEA: no fence (the prefix is DEMO-MUG), amazon capped at 50 by a `skus` rule.
        assert_eq!(
            ats(&engine, &tenant, "DEMO-TEA"),
            expect(&[
                (SHOPIFY, 120),
                (AMAZON, 50),
                (B2B, 120),
                (EBAY, 108),
                (AGENT, 5)
            ])
        );
        // The bundle: min(MUG / 2, TEA / 1) per channel.
        assert_eq!(
            ats(&engine, &tenant, DEMO_BUNDLE),
            expect(&[
                (SHOPIFY, 80),
                (AMAZON, 50),
                (B2B, 90),
                (EBAY, 72),
                (AGENT, 2)
            ])
        );
    }

    #[test]
    fn the_demo_is_deterministic() {
        let tenant = TenantId::new("acme").unwrap();
        assert_eq!(demo_requests(&tenant), demo_requests(&tenant));
        assert!(demo_requests(&tenant).iter().all(|r| r.tenant == tenant));
    }
}
