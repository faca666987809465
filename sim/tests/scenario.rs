//! Scenario files: the shipped ones load, and a bad one is refused with an error naming the
//! field.

use depot_sim::scenario::{Scenario, ScenarioError};
use std::path::Path;

const MINIMAL: &str = r#"
name = "t"
seed = 1
duration_minutes = 5
[catalog]
skus = 10
[[locations]]
id = "wh"
stock_per_sku = 3
[[channels]]
id = "web"
kind = "shopify"
share = 1.0
[demand]
orders_per_minute = 10
"#;

fn error(text: &str) -> (String, String) {
    match Scenario::parse(text, "test.toml") {
        Err(ScenarioError::Invalid {
            field,
            message,
            path,
        }) => {
            assert_eq!(path, "test.toml");
            (field, message)
        }
        other => panic!("expected an invalid scenario, got {other:?}"),
    }
}

#[test]
fn the_shipped_scenarios_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    for name in [
        "steady-day",
        "black-friday",
        "hot-sku-sellout",
        "marketplace-sync-lag",
    ] {
        let s = Scenario::load(&dir.join(format!("{name}.toml"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, name);
        assert!(!s.description.is_empty());
    }
    let bf = Scenario::load(&dir.join("black-friday.toml")).unwrap();
    assert_eq!(bf.spikes[0].multiplier, 10.0);
    assert_eq!(bf.multiplier("amazon:us", 150.0).0, 10.0);
    assert_eq!(bf.multiplier("amazon:us", 30.0).0, 1.0);
}

#[test]
fn a_minimal_scenario_gets_defaults() {
    let s = Scenario::parse(MINIMAL, "m").unwrap();
    assert_eq!(s.tenant, "sim");
    assert_eq!(s.demand.hold_ttl_seconds, 900);
    assert_eq!(s.engine.shards, 2);
    assert_eq!(s.sku(3).as_str(), "SKU-00003");
}

#[test]
fn an_unknown_field_is_named() {
    let (field, message) = error(&MINIMAL.replace(
        "orders_per_minute = 10",
        "orders_per_minute = 10\nabandon = 0.5",
    ));
    assert_eq!(field, "demand.abandon");
    assert!(message.contains("abandon"), "{message}");
}

#[test]
fn out_of_range_values_name_their_field() {
    let cases = [
        (
            "orders_per_minute = 10",
            "orders_per_minute = 10\nabandon_rate = 1.5",
            "demand.abandon_rate",
        ),
        (
            "orders_per_minute = 10",
            "orders_per_minute = 10\ncheckout_seconds_max = 2000",
            "demand.checkout_seconds_max",
        ),
        ("skus = 10", "skus = 0", "catalog.skus"),
        ("id = \"wh\"", "id = \"w h\"", "locations[0].id"),
        ("share = 1.0", "share = -1.0", "channels[0].share"),
        (
            "duration_minutes = 5",
            "duration_minutes = 0",
            "duration_minutes",
        ),
        (
            "stock_per_sku = 3",
            "stock_per_sku = -3",
            "locations[0].stock_per_sku",
        ),
    ];
    for (from, to, want) in cases {
        let text = MINIMAL.replace(from, to);
        assert_ne!(text, MINIMAL);
        let (field, message) = error(&text);
        assert_eq!(field, want, "{message}");
    }
    let spike = format!("{MINIMAL}\n[[spikes]]\nstart_minute = 1\nduration_minutes = 2\nmultiplier = 3\nchannels = [\"nope\"]\n");
    let (field, message) = error(&spike);
    assert_eq!(field, "spikes[0].channels[0]");
    assert!(message.contains("nope"));
}

#[test]
fn wrong_types_and_missing_fields_are_named() {
    let (field, message) = error(&MINIMAL.replace("skus = 10", "skus = \"ten\""));
    assert_eq!(field, "catalog.skus", "{message}");
    let (field, message) = error(&MINIMAL.replace("seed = 1\n", ""));
    assert!(message.contains("seed"), "{field}: {message}");
    let (_, message) = error("name = ");
    assert!(!message.is_empty());
    let (field, message) = error(&MINIMAL.replace("kind = \"shopify\"", "kind = \"myspace\""));
    assert_eq!(field, "channels[0].kind", "{message}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let e = Scenario::load(Path::new("/nonexistent/scenario.toml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/scenario.toml"));
}
