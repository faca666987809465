//! The allocation-rule document: its wire form, whole-document validation, and the compiled
//! form the ATS function reads. The semantics are specified in `docs/allocation.md`.

use crate::config::{ChanIdx, LocIdx, TenantConfig};
use crate::ids::{check_id, ChannelId, LocationId, Sku};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most rules one document may hold.
pub const RULES_MAX: usize = 1_000;
/// Most SKUs, channels or locations one rule may list.
pub const RULE_LIST_MAX: usize = 1_000;
/// Most list entries (SKUs, channels, locations, regions) in the whole document. Keeps a
/// document, as logged, far below the log's record size limit.
pub const RULE_ENTRIES_MAX: usize = 20_000;

/// What the oversell incident does with committed orders a count can no longer serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OversellPolicy {
    /// The most recently created reservations are backordered first.
    #[default]
    NewestFirst,
    /// Reservations of the lowest-priority channel are backordered first (newest first within).
    LowestPriorityFirst,
}

/// The whole rule document as a merchant writes it (`PUT /v1/allocation-rules`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDocument {
    /// Assigned by depot: 1 for the first document, +1 for each accepted one.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub oversell_policy: OversellPolicy,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// One rule. Targets: `skus` (a list) or `sku_prefix`, or neither for all SKUs. Channels:
/// `channels` (a list) or `except_channels`, or neither for all channels.
///
/// Read through [`RuleWire`]: serde cannot combine `flatten` with `deny_unknown_fields`
/// (every field, `kind` included, was refused as unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RuleWire")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten)]
    pub kind: RuleKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skus: Option<Vec<Sku>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<ChannelId>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_channels: Option<Vec<ChannelId>>,
}

/// A routing strategy: the order in which a line's units are taken from locations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "strategy")]
pub enum Routing {
    /// The listed locations first, in list order, then the others in creation order.
    Priority { locations: Vec<LocationId> },
    /// The location with the most available first.
    MostStock,
    /// Locations able to serve the most lines of the reservation in full first.
    FewestSplits,
    /// By the request's `ship_to_region`: the regions listed for it, in order.
    Nearest {
        #[serde(default)]
        regions: BTreeMap<String, Vec<String>>,
    },
}

/// The rule kinds of PRODUCT.md.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RuleKind {
    /// The channels may sell only from `locations` (when given) and never from `deny_locations`.
    Eligibility {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locations: Option<Vec<LocationId>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deny_locations: Option<Vec<LocationId>>,
    },
    /// Hold back `units` or `percent` (rounded up) of the channel's ATS.
    Buffer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        units: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percent: Option<u8>,
    },
    /// Advertise at most `units`.
    Cap { units: i64 },
    /// Keep `units` or `percent` (rounded down) of the sellable stock for `channel` alone.
    RingFence {
        channel: ChannelId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        units: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percent: Option<u8>,
    },
    /// When the SKU's total available is at or below `threshold`, channels with a priority
    /// below `min_priority` see zero.
    Scarcity { threshold: i64, min_priority: i32 },
    /// How a reservation's lines are allocated to locations.
    Routing(Routing),
}

impl Default for RuleKind {
    fn default() -> Self {
        RuleKind::Cap { units: 0 }
    }
}

/// The wire form of a [`Rule`]: every field of every kind, flat, so that a field unknown to
/// the rule's kind is refused rather than silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleWire {
    #[serde(default)]
    id: Option<String>,
    kind: String,
    #[serde(default)]
    skus: Option<Vec<Sku>>,
    #[serde(default)]
    sku_prefix: Option<String>,
    #[serde(default)]
    channels: Option<Vec<ChannelId>>,
    #[serde(default)]
    except_channels: Option<Vec<ChannelId>>,
    #[serde(default)]
    locations: Option<Vec<LocationId>>,
    #[serde(default)]
    deny_locations: Option<Vec<LocationId>>,
    #[serde(default)]
    units: Option<i64>,
    #[serde(default)]
    percent: Option<u8>,
    #[serde(default)]
    channel: Option<ChannelId>,
    #[serde(default)]
    threshold: Option<i64>,
    #[serde(default)]
    min_priority: Option<i32>,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    regions: Option<BTreeMap<String, Vec<String>>>,
}

impl TryFrom<RuleWire> for Rule {
    type Error = String;
    fn try_from(w: RuleWire) -> Result<Rule, String> {
        let given = [
            ("locations", w.locations.is_some()),
            ("deny_locations", w.deny_locations.is_some()),
            ("units", w.units.is_some()),
            ("percent", w.percent.is_some()),
            ("channel", w.channel.is_some()),
            ("threshold", w.threshold.is_some()),
            ("min_priority", w.min_priority.is_some()),
            ("strategy", w.strategy.is_some()),
            ("regions", w.regions.is_some()),
        ];
        let allowed: &[&str] = match (w.kind.as_str(), w.strategy.as_deref()) {
            ("eligibility", _) => &["locations", "deny_locations"],
            ("buffer", _) => &["units", "percent"],
            ("cap", _) => &["units"],
            ("ring_fence", _) => &["channel", "units", "percent"],
            ("scarcity", _) => &["threshold", "min_priority"],
            ("routing", Some("priority")) => &["strategy", "locations"],
            ("routing", Some("nearest")) => &["strategy", "regions"],
            ("routing", _) => &["strategy"],
            (k, _) => return Err(format!("unknown rule kind {k:?}")),
        };
        if let Some((f, _)) = given.iter().find(|(f, g)| *g && !allowed.contains(f)) {
            return Err(format!("unknown field `{f}` for a {} rule", w.kind));
        }
        let need = |f: &str| format!("missing field `{f}`");
        let kind = match w.kind.as_str() {
            "eligibility" => RuleKind::Eligibility {
                locations: w.locations,
                deny_locations: w.deny_locations,
            },
            "buffer" => RuleKind::Buffer {
                units: w.units,
                percent: w.percent,
            },
            "cap" => RuleKind::Cap {
                units: w.units.ok_or_else(|| need("units"))?,
            },
            "ring_fence" => RuleKind::RingFence {
                channel: w.channel.ok_or_else(|| need("channel"))?,
                units: w.units,
                percent: w.percent,
            },
            "scarcity" => RuleKind::Scarcity {
                threshold: w.threshold.ok_or_else(|| need("threshold"))?,
                min_priority: w.min_priority.ok_or_else(|| need("min_priority"))?,
            },
            _ => RuleKind::Routing(match w.strategy.as_deref() {
                Some("priority") => Routing::Priority {
                    locations: w.locations.ok_or_else(|| need("locations"))?,
                },
                Some("most_stock") => Routing::MostStock,
                Some("fewest_splits") => Routing::FewestSplits,
                Some("nearest") => Routing::Nearest {
                    regions: w.regions.unwrap_or_default(),
                },
                Some(s) => return Err(format!("unknown routing strategy {s:?}")),
                None => return Err(need("strategy")),
            }),
        };
        Ok(Rule {
            id: w.id,
            kind,
            skus: w.skus,
            sku_prefix: w.sku_prefix,
            channels: w.channels,
            except_channels: w.except_channels,
        })
    }
}

/// A validation failure, naming the offending rule by position and id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", rule_name(*.index, .id.as_deref()))]
pub struct RuleError {
    /// Position in `rules` (0-based), or `None` for the document itself.
    pub index: Option<usize>,
    pub id: Option<String>,
    pub field: &'static str,
    pub message: String,
}

fn rule_name(index: Option<usize>, id: Option<&str>) -> String {
    match (index, id) {
        (Some(i), Some(id)) => format!("rules[{i}] (id {id:?})"),
        (Some(i), None) => format!("rules[{i}]"),
        (None, _) => "document".to_string(),
    }
}

/// Which SKUs a compiled rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    All,
    Prefix(String),
    Skus(BTreeSet<Sku>),
}

impl Target {
    fn matches(&self, sku: &Sku) -> bool {
        match self {
            Target::All => true,
            Target::Prefix(p) => sku.as_str().starts_with(p.as_str()),
            Target::Skus(set) => set.contains(sku),
        }
    }
    /// Higher is more specific: a list beats a prefix (longer beats shorter) beats all.
    fn specificity(&self) -> u32 {
        match self {
            Target::All => 0,
            Target::Prefix(p) => 1 + p.len() as u32,
            Target::Skus(_) => 1_000,
        }
    }
}

/// A rule resolved against the tenant's channel and location indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub index: usize,
    pub id: Option<String>,
    pub target: Target,
    /// `None`: every channel. Otherwise a bitmap over channel indexes.
    pub channels: Option<Vec<bool>>,
    pub kind: CompiledKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Amount {
    Units(i64),
    Percent(u8),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompiledKind {
    Eligibility {
        allow: Option<Vec<LocIdx>>,
        deny: Vec<LocIdx>,
    },
    Buffer(Amount),
    Cap(i64),
    RingFence {
        channel: ChanIdx,
        amount: Amount,
    },
    Scarcity {
        threshold: i64,
        min_priority: i32,
    },
    Routing(CompiledRouting),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompiledRouting {
    Priority(Vec<LocIdx>),
    MostStock,
    FewestSplits,
    Nearest(BTreeMap<String, Vec<String>>),
}

/// The rule document compiled for fast lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledRules {
    pub rules: Vec<CompiledRule>,
    pub oversell_policy: OversellPolicy,
}

impl CompiledRule {
    fn applies_to_channel(&self, c: ChanIdx) -> bool {
        self.channels
            .as_ref()
            .is_none_or(|m| m.get(c as usize).copied().unwrap_or(false))
    }
    /// Ordering key for "most specific wins"; ties go to the earlier rule.
    fn rank(&self) -> (u32, bool, std::cmp::Reverse<usize>) {
        (
            self.target.specificity(),
            self.channels.is_some(),
            std::cmp::Reverse(self.index),
        )
    }
}

/// The rules that apply to one (SKU, channel), resolved.
#[derive(Clone, Debug, Default)]
pub struct Applicable<'a> {
    pub eligibility: Vec<&'a CompiledRule>,
    pub buffer: Option<&'a CompiledRule>,
    pub cap: Option<&'a CompiledRule>,
    pub scarcity: Option<&'a CompiledRule>,
    pub routing: Option<&'a CompiledRule>,
}

impl CompiledRules {
    /// The rules for `sku` sold on channel `c`: every matching eligibility rule; for each other
    /// kind the single most specific matching rule.
    pub fn applicable(&self, sku: &Sku, c: ChanIdx) -> Applicable<'_> {
        let mut out = Applicable::default();
        for r in &self.rules {
            if matches!(r.kind, CompiledKind::RingFence { .. }) {
                continue;
            }
            if !r.applies_to_channel(c) || !r.target.matches(sku) {
                continue;
            }
            let slot = match r.kind {
                CompiledKind::Eligibility { .. } => {
                    out.eligibility.push(r);
                    continue;
                }
                CompiledKind::Buffer(_) => &mut out.buffer,
                CompiledKind::Cap(_) => &mut out.cap,
                CompiledKind::Scarcity { .. } => &mut out.scarcity,
                CompiledKind::Routing(_) => &mut out.routing,
                CompiledKind::RingFence { .. } => unreachable!("skipped above"),
            };
            if slot.is_none_or(|cur| r.rank() > cur.rank()) {
                *slot = Some(r);
            }
        }
        out
    }

    /// For each fenced channel, the most specific ring-fence rule matching `sku`, by channel.
    pub fn fences(&self, sku: &Sku) -> BTreeMap<ChanIdx, &CompiledRule> {
        let mut out: BTreeMap<ChanIdx, &CompiledRule> = BTreeMap::new();
        for r in &self.rules {
            if let CompiledKind::RingFence { channel, .. } = r.kind {
                if r.target.matches(sku)
                    && out.get(&channel).is_none_or(|cur| r.rank() > cur.rank())
                {
                    out.insert(channel, r);
                }
            }
        }
        out
    }

    /// True when no rule can make ATS differ between channels or from the pool.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Rule {
    /// How many entries the rule's lists hold in all.
    fn list_entries(&self) -> usize {
        let lists = self.skus.as_ref().map_or(0, Vec::len)
            + self.channels.as_ref().map_or(0, Vec::len)
            + self.except_channels.as_ref().map_or(0, Vec::len);
        lists
            + match &self.kind {
                RuleKind::Eligibility {
                    locations,
                    deny_locations,
                } => {
                    locations.as_ref().map_or(0, Vec::len)
                        + deny_locations.as_ref().map_or(0, Vec::len)
                }
                RuleKind::Routing(Routing::Priority { locations }) => locations.len(),
                RuleKind::Routing(Routing::Nearest { regions }) => {
                    regions.len() + regions.values().map(Vec::len).sum::<usize>()
                }
                _ => 0,
            }
    }
}

/// Validates `doc` as a whole against `config` and compiles it. The first error found is
/// returned; it names the rule and the field.
pub fn compile(doc: &RuleDocument, config: &TenantConfig) -> Result<CompiledRules, RuleError> {
    if doc.rules.len() > RULES_MAX {
        return Err(RuleError {
            index: None,
            id: None,
            field: "rules",
            message: format!("holds {} rules, the limit is {RULES_MAX}", doc.rules.len()),
        });
    }
    let entries: usize = doc.rules.iter().map(Rule::list_entries).sum();
    if entries > RULE_ENTRIES_MAX {
        return Err(RuleError {
            index: None,
            id: None,
            field: "rules",
            message: format!("lists {entries} SKUs, channels, locations and regions in all, the limit is {RULE_ENTRIES_MAX}"),
        });
    }
    let mut seen_ids = BTreeSet::new();
    let mut rules = Vec::with_capacity(doc.rules.len());
    for (index, rule) in doc.rules.iter().enumerate() {
        let err = |field: &'static str, message: String| RuleError {
            index: Some(index),
            id: rule.id.clone(),
            field,
            message,
        };
        if let Some(id) = &rule.id {
            if id.is_empty() || id.len() > 128 {
                return Err(err("id", "must be 1 to 128 bytes".into()));
            }
            if !seen_ids.insert(id.clone()) {
                return Err(err("id", format!("id {id:?} is used by an earlier rule")));
            }
        }
        let target = compile_target(rule).map_err(|(f, m)| err(f, m))?;
        let channels = compile_channels(rule, config).map_err(|(f, m)| err(f, m))?;
        let kind = compile_kind(&rule.kind, config).map_err(|(f, m)| err(f, m))?;
        if matches!(kind, CompiledKind::RingFence { .. }) && channels.is_some() {
            return Err(err(
                "channels",
                "a ring_fence names its one channel in `channel`".into(),
            ));
        }
        if matches!(kind, CompiledKind::Scarcity { .. }) && channels.is_some() {
            return Err(err(
                "channels",
                "a scarcity rule applies to all channels by priority".into(),
            ));
        }
        rules.push(CompiledRule {
            index,
            id: rule.id.clone(),
            target,
            channels,
            kind,
        });
    }
    Ok(CompiledRules {
        rules,
        oversell_policy: doc.oversell_policy,
    })
}

type FieldErr = (&'static str, String);

fn compile_target(rule: &Rule) -> Result<Target, FieldErr> {
    match (&rule.skus, &rule.sku_prefix) {
        (Some(_), Some(_)) => Err(("skus", "give `skus` or `sku_prefix`, not both".into())),
        (Some(list), None) => {
            check_list_len("skus", list.len())?;
            Ok(Target::Skus(list.iter().cloned().collect()))
        }
        (None, Some(p)) => {
            check_id(p).map_err(|e| ("sku_prefix", format!("sku_prefix {e}")))?;
            Ok(Target::Prefix(p.clone()))
        }
        (None, None) => Ok(Target::All),
    }
}

fn check_list_len(field: &'static str, n: usize) -> Result<(), FieldErr> {
    if n == 0 {
        return Err((field, format!("`{field}` must not be empty")));
    }
    if n > RULE_LIST_MAX {
        return Err((
            field,
            format!("`{field}` lists {n} entries, the limit is {RULE_LIST_MAX}"),
        ));
    }
    Ok(())
}

fn compile_channels(rule: &Rule, config: &TenantConfig) -> Result<Option<Vec<bool>>, FieldErr> {
    let (field, list, negate) = match (&rule.channels, &rule.except_channels) {
        (Some(_), Some(_)) => {
            return Err((
                "channels",
                "give `channels` or `except_channels`, not both".into(),
            ))
        }
        (Some(l), None) => ("channels", l, false),
        (None, Some(l)) => ("except_channels", l, true),
        (None, None) => return Ok(None),
    };
    check_list_len(field, list.len())?;
    let mut mask = vec![negate; config.channels.len()];
    for ch in list {
        let i = config
            .channel_idx(ch)
            .ok_or((field, format!("unknown channel {:?}", ch.as_str())))?;
        mask[i as usize] = !negate;
    }
    Ok(Some(mask))
}

fn locations(
    field: &'static str,
    list: &[LocationId],
    config: &TenantConfig,
) -> Result<Vec<LocIdx>, FieldErr> {
    check_list_len(field, list.len())?;
    let mut out = Vec::with_capacity(list.len());
    for l in list {
        let i = config
            .location_idx(l)
            .ok_or((field, format!("unknown location {:?}", l.as_str())))?;
        if out.contains(&i) {
            return Err((field, format!("location {:?} is listed twice", l.as_str())));
        }
        out.push(i);
    }
    Ok(out)
}

fn amount(units: Option<i64>, percent: Option<u8>) -> Result<Amount, FieldErr> {
    match (units, percent) {
        (Some(_), Some(_)) => Err(("units", "give `units` or `percent`, not both".into())),
        (None, None) => Err(("units", "give `units` or `percent`".into())),
        (Some(u), None) if !(0..=crate::limits::QUANTITY_MAX).contains(&u) => Err((
            "units",
            format!(
                "units must be between 0 and {}",
                crate::limits::QUANTITY_MAX
            ),
        )),
        (Some(u), None) => Ok(Amount::Units(u)),
        (None, Some(p)) if p > 100 => Err(("percent", "percent must be between 0 and 100".into())),
        (None, Some(p)) => Ok(Amount::Percent(p)),
    }
}

fn compile_kind(kind: &RuleKind, config: &TenantConfig) -> Result<CompiledKind, FieldErr> {
    Ok(match kind {
        RuleKind::Eligibility {
            locations: allow,
            deny_locations,
        } => {
            if allow.is_none() && deny_locations.is_none() {
                return Err((
                    "locations",
                    "give `locations`, `deny_locations` or both".into(),
                ));
            }
            let allow = allow
                .as_deref()
                .map(|l| locations("locations", l, config))
                .transpose()?;
            let deny = deny_locations
                .as_deref()
                .map(|l| locations("deny_locations", l, config))
                .transpose()?;
            CompiledKind::Eligibility {
                allow,
                deny: deny.unwrap_or_default(),
            }
        }
        RuleKind::Buffer { units, percent } => CompiledKind::Buffer(amount(*units, *percent)?),
        RuleKind::Cap { units } => {
            if !(0..=crate::limits::QUANTITY_MAX).contains(units) {
                return Err((
                    "units",
                    format!(
                        "units must be between 0 and {}",
                        crate::limits::QUANTITY_MAX
                    ),
                ));
            }
            CompiledKind::Cap(*units)
        }
        RuleKind::RingFence {
            channel,
            units,
            percent,
        } => {
            let c = config
                .channel_idx(channel)
                .ok_or(("channel", format!("unknown channel {:?}", channel.as_str())))?;
            CompiledKind::RingFence {
                channel: c,
                amount: amount(*units, *percent)?,
            }
        }
        RuleKind::Scarcity {
            threshold,
            min_priority,
        } => {
            if !(0..=crate::limits::QUANTITY_MAX).contains(threshold) {
                return Err((
                    "threshold",
                    format!(
                        "threshold must be between 0 and {}",
                        crate::limits::QUANTITY_MAX
                    ),
                ));
            }
            CompiledKind::Scarcity {
                threshold: *threshold,
                min_priority: *min_priority,
            }
        }
        RuleKind::Routing(r) => CompiledKind::Routing(match r {
            Routing::Priority { locations: l } => {
                CompiledRouting::Priority(locations("locations", l, config)?)
            }
            Routing::MostStock => CompiledRouting::MostStock,
            Routing::FewestSplits => CompiledRouting::FewestSplits,
            Routing::Nearest { regions } => {
                if regions.len() > RULE_LIST_MAX
                    || regions.values().any(|v| v.len() > RULE_LIST_MAX)
                {
                    return Err((
                        "regions",
                        format!("regions may list at most {RULE_LIST_MAX} entries"),
                    ));
                }
                CompiledRouting::Nearest(regions.clone())
            }
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_listing_too_many_entries_is_refused_as_a_whole() {
        let cfg = TenantConfig::default();
        let rule = |i: usize| Rule {
            id: Some(format!("cap-{i}")),
            kind: RuleKind::Cap { units: 5 },
            skus: Some(
                (0..RULE_LIST_MAX)
                    .map(|k| Sku::new(&format!("s-{i}-{k}")).unwrap())
                    .collect(),
            ),
            ..Rule::default()
        };
        let fits = RuleDocument {
            rules: (0..RULE_ENTRIES_MAX / RULE_LIST_MAX).map(rule).collect(),
            ..RuleDocument::default()
        };
        assert!(compile(&fits, &cfg).is_ok());
        let too_many = RuleDocument {
            rules: (0..=RULE_ENTRIES_MAX / RULE_LIST_MAX).map(rule).collect(),
            ..RuleDocument::default()
        };
        let e = compile(&too_many, &cfg).unwrap_err();
        assert_eq!((e.index, e.field), (None, "rules"));
        assert!(e.message.contains("21000"), "{}", e.message);
    }
}
