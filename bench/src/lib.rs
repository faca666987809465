//! Workload samplers and setup shared by depot benchmarks.
//!
//! Everything here follows `shared/workloads/WORKLOADS.md` (W1, W2): a bounded Zipf(N, 1.1)
//! sampler over ranks 1..=N (precomputed CDF, binary search), SKU names by rank
//! (`sku-00001`.., no permutation of ranks), the W1 and W2 request generators, and a setup that
//! creates one tenant with one location and one channel and receives stock into every SKU.

pub mod idle;

use depot_engine::{
    ChannelId, ChannelKind, Command, Engine, FillPolicy, LineRequest, LocationId, LocationKind,
    Machine, Outcome, Request, Sku, TenantId,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// N of W1 and W2.
pub const SKUS: usize = 10_000;
/// `available` of every SKU at the start of W1 and W2.
pub const STOCK_PER_SKU: i64 = 1_000_000;
/// The Zipf exponent of every workload.
pub const ZIPF_S: f64 = 1.1;
/// Lines of a W2 cart.
pub const W2_LINES: usize = 3;
/// Receives per `Engine::execute` call during setup.
pub const SETUP_BATCH: usize = 4_096;

pub const TENANT: &str = "bench";
pub const LOCATION: &str = "wh-1";
pub const CHANNEL: &str = "web";
/// The actor recorded on every request, as an API key id would be.
pub const KEY_ID: &str = "bench-key";

/// The RNG every client uses: seeded, reproducible.
pub type BenchRng = ChaCha8Rng;

/// An RNG for client `client` of run `run`.
pub fn rng(run: u64, client: u64) -> BenchRng {
    ChaCha8Rng::seed_from_u64(0xd390_7000_0000_0000 ^ (run << 32) ^ client)
}

/// Bounded Zipf(N, s): P(r) = r^-s / Σ_{k=1..N} k^-s for ranks r = 1..=N.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// `cdf[i]` = P(rank <= i + 1); the last entry is exactly 1.
    cdf: Vec<f64>,
    /// Walker's alias table (Vose's construction) of the same law, for sampling in constant
    /// time: column `i` is drawn uniformly, then rank `i + 1` with probability `prob[i]`, else
    /// rank `alias[i] + 1`. A binary search over the CDF cost the benchmarks' clients about 6 %
    /// of all the CPU they share with the engine in W1.
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        assert!(n >= 1, "Zipf needs at least one rank");
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for r in 1..=n {
            acc += (r as f64).powf(-s);
            cdf.push(acc);
        }
        let total = acc;
        for c in &mut cdf {
            *c /= total;
        }
        cdf[n - 1] = 1.0;
        let (prob, alias) = alias_table(&cdf);
        Zipf { cdf, prob, alias }
    }

    /// Number of ranks.
    pub fn n(&self) -> usize {
        self.cdf.len()
    }

    /// P(rank = r), r in 1..=N.
    pub fn p(&self, r: usize) -> f64 {
        assert!((1..=self.n()).contains(&r), "rank out of range");
        if r == 1 {
            self.cdf[0]
        } else {
            self.cdf[r - 1] - self.cdf[r - 2]
        }
    }

    /// Draws a rank in 1..=N from the alias table: one 64-bit draw, its high half picks the
    /// column (multiply-shift; a bias below N / 2^32 of a column's share), its low half the
    /// side.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: u64 = rng.gen();
        let column = (((u >> 32) * self.prob.len() as u64) >> 32) as usize;
        let side = (u & 0xFFFF_FFFF) as f64 * (1.0 / 4_294_967_296.0);
        if side < self.prob[column] {
            column + 1
        } else {
            self.alias[column] as usize + 1
        }
    }

    /// Draws `K` distinct ranks by rejection sampling (each redrawn until it differs from
    /// the earlier ones), in draw order.
    pub fn sample_distinct<const K: usize, R: Rng + ?Sized>(&self, rng: &mut R) -> [usize; K] {
        assert!(
            K <= self.n(),
            "cannot draw more distinct ranks than there are"
        );
        let mut out = [0usize; K];
        for i in 0..K {
            out[i] = loop {
                let r = self.sample(rng);
                if !out[..i].contains(&r) {
                    break r;
                }
            };
        }
        out
    }
}

/// Vose's alias table of the law whose CDF is `cdf`: per column, the probability of keeping
/// it and the column it gives way to otherwise.
fn alias_table(cdf: &[f64]) -> (Vec<f64>, Vec<u32>) {
    let n = cdf.len();
    let mut scaled: Vec<f64> = (0..n)
        .map(|i| (cdf[i] - if i == 0 { 0.0 } else { cdf[i - 1] }) * n as f64)
        .collect();
    let mut prob = vec![1.0; n];
    let mut alias: Vec<u32> = (0..n as u32).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        prob[s] = scaled[s];
        alias[s] = l as u32;
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // What is left is 1 up to rounding: kept whole.
    (prob, alias)
}

/// The name of the SKU of rank `r` (1-based): `sku-00001`.. (zero-padded, text order = rank
/// order).
pub fn sku_name(r: usize) -> String {
    format!("sku-{r:05}")
}

/// Generates W1 and W2 requests for one tenant and channel.
#[derive(Debug, Clone)]
pub struct Workload {
    pub tenant: TenantId,
    pub location: LocationId,
    pub channel: ChannelId,
    /// `skus[r - 1]` is the SKU of rank r.
    pub skus: Vec<Sku>,
    pub zipf: Zipf,
}

impl Workload {
    /// The W1/W2 workload over `n` SKUs.
    pub fn new(n: usize) -> Self {
        Workload {
            tenant: TenantId::new(TENANT).expect("valid id"),
            location: LocationId::new(LOCATION).expect("valid id"),
            channel: ChannelId::new(CHANNEL).expect("valid id"),
            skus: (1..=n)
                .map(|r| Sku::new(&sku_name(r)).expect("valid id"))
                .collect(),
            zipf: Zipf::new(n, ZIPF_S),
        }
    }

    pub fn request(&self, command: Command) -> Request {
        Request {
            tenant: self.tenant.clone(),
            key_id: KEY_ID.into(),
            idempotency_key: None,
            command,
        }
    }

    fn reserve(&self, lines: Vec<LineRequest>) -> Request {
        self.request(Command::Reserve {
            channel: self.channel.clone(),
            lines,
            ttl_ms: Some(900_000),
            order_ref: None,
            ship_to_region: None,
            fill: FillPolicy::AllOrNothing,
        })
    }

    /// W1: one line, sku ~ Zipf, qty 1.
    pub fn w1<R: Rng + ?Sized>(&self, rng: &mut R) -> Request {
        let r = self.zipf.sample(rng);
        self.reserve(vec![LineRequest {
            sku: self.skus[r - 1].clone(),
            quantity: 1,
        }])
    }

    /// W2's lines: 3 distinct SKUs (rejection sampling), qty ~ Uniform{1, 2, 3} each, in
    /// ascending SKU order. Returns (rank, qty) pairs.
    pub fn w2_lines<R: Rng + ?Sized>(&self, rng: &mut R) -> [(usize, i64); W2_LINES] {
        let ranks = self.zipf.sample_distinct::<W2_LINES, _>(rng);
        let mut lines = ranks.map(|r| (r, 0i64));
        for l in &mut lines {
            l.1 = rng.gen_range(1..=3);
        }
        lines.sort_unstable_by_key(|l| l.0);
        lines
    }

    /// W2: a three-line cart, all or nothing.
    pub fn w2<R: Rng + ?Sized>(&self, rng: &mut R) -> Request {
        let lines = self.w2_lines(rng);
        self.reserve(
            lines
                .iter()
                .map(|&(r, q)| LineRequest {
                    sku: self.skus[r - 1].clone(),
                    quantity: q,
                })
                .collect(),
        )
    }

    /// A batch of `len` requests of workload `w`.
    pub fn batch<R: Rng + ?Sized>(&self, w: W, len: usize, rng: &mut R) -> Vec<Request> {
        (0..len).map(|_| self.gen(w, rng)).collect()
    }

    pub fn gen<R: Rng + ?Sized>(&self, w: W, rng: &mut R) -> Request {
        match w {
            W::W1 => self.w1(rng),
            W::W2 => self.w2(rng),
        }
    }

    /// A stock read of the SKU of rank `r`.
    pub fn get_stock(&self, r: usize) -> Request {
        self.request(Command::GetStock {
            sku: self.skus[r - 1].clone(),
        })
    }

    /// The configuration requests: the tenant, its location and its channel.
    pub fn config_requests(&self) -> Vec<Request> {
        vec![
            self.request(Command::CreateTenant),
            self.request(Command::PutLocation {
                location: self.location.clone(),
                kind: LocationKind::Warehouse,
                name: "Bench warehouse".into(),
                region: None,
                wms: None,
            }),
            self.request(Command::PutChannel {
                channel: self.channel.clone(),
                kind: ChannelKind::Shopify,
                priority: 0,
            }),
        ]
    }

    /// The receive of `units` into the SKU of rank `r`.
    pub fn receive(&self, r: usize, units: i64) -> Request {
        self.request(Command::Receive {
            sku: self.skus[r - 1].clone(),
            location: self.location.clone(),
            quantity: units,
            unit_cost: None,
            reason: "bench setup".into(),
        })
    }

    /// Creates the tenant, location and channel and receives `units` into every SKU, in
    /// batches of [`SETUP_BATCH`] through [`Engine::execute`]. Panics if anything is refused.
    pub fn setup_engine(&self, engine: &Engine, units: i64) {
        for req in self.config_requests() {
            let (resp, _) = engine.execute_one(req, 1);
            assert!(resp.outcome.is_ok(), "setup refused: {:?}", resp.outcome);
        }
        let ranks: Vec<usize> = (1..=self.skus.len()).collect();
        for chunk in ranks.chunks(SETUP_BATCH) {
            let batch = chunk.iter().map(|&r| self.receive(r, units)).collect();
            for (resp, _) in engine.execute(batch, 1) {
                assert!(
                    resp.outcome.is_ok(),
                    "setup receive refused: {:?}",
                    resp.outcome
                );
            }
        }
    }

    /// [`Workload::setup_engine`] for a single-threaded [`Machine`].
    pub fn setup_machine(&self, machine: &mut Machine, units: i64) {
        let receives = (1..=self.skus.len()).map(|r| self.receive(r, units));
        for req in self.config_requests().into_iter().chain(receives) {
            let (resp, _, _) = machine.execute(&req, 1);
            assert!(resp.outcome.is_ok(), "setup refused: {:?}", resp.outcome);
        }
    }
}

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum W {
    W1,
    W2,
}

impl W {
    pub fn name(self) -> &'static str {
        match self {
            W::W1 => "W1",
            W::W2 => "W2",
        }
    }
}

/// What a batch of answers held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Reservations held.
    pub ok: u64,
    /// Refused for insufficient stock (counts as a completed operation).
    pub insufficient: u64,
    /// Any other refusal (overload, limits): a bench failure.
    pub other: u64,
    /// Units reserved by the successful operations.
    pub units: i64,
}

impl Tally {
    pub fn ops(&self) -> u64 {
        self.ok + self.insufficient
    }

    pub fn add(&mut self, o: &Tally) {
        self.ok += o.ok;
        self.insufficient += o.insufficient;
        self.other += o.other;
        self.units += o.units;
    }

    /// Counts the answer to one reserve request of `units` units in all.
    pub fn count(&mut self, units: i64, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(_) => {
                self.ok += 1;
                self.units += units;
            }
            Outcome::Refused(depot_engine::Refusal::InsufficientStock { .. }) => {
                self.insufficient += 1
            }
            Outcome::Refused(_) => self.other += 1,
        }
    }
}

/// The units a reserve request asks for, over all its lines (0 for other commands).
pub fn units(request: &Request) -> i64 {
    match &request.command {
        Command::Reserve { lines, .. } => lines.iter().map(|l| l.quantity).sum(),
        _ => 0,
    }
}

/// Stock totals over every SKU, read with `GetStock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StockCheck {
    pub available: i64,
    pub reserved: i64,
    pub min_available: i64,
    pub skus_read: usize,
}

impl Workload {
    /// Reads every SKU's stock with `GetStock` (batches through the engine) and sums it.
    pub fn check_engine(&self, engine: &Engine) -> StockCheck {
        let mut c = StockCheck {
            min_available: i64::MAX,
            ..StockCheck::default()
        };
        let ranks: Vec<usize> = (1..=self.skus.len()).collect();
        for chunk in ranks.chunks(SETUP_BATCH) {
            let batch = chunk.iter().map(|&r| self.get_stock(r)).collect();
            for (resp, _) in engine.execute(batch, u64::MAX / 2) {
                let Outcome::Ok(depot_engine::Reply::Stock(view)) = resp.outcome else {
                    panic!("get_stock failed: {:?}", resp.outcome)
                };
                c.skus_read += 1;
                for l in &view.locations {
                    c.available += l.available;
                    c.reserved += l.reserved;
                    c.min_available = c.min_available.min(l.available);
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_matches_the_law() {
        let z = Zipf::new(SKUS, ZIPF_S);
        let h: f64 = (1..=SKUS).map(|k| (k as f64).powf(-ZIPF_S)).sum();
        assert!((z.p(1) - 1.0 / h).abs() < 1e-12);
        assert!((z.p(10) - 10f64.powf(-ZIPF_S) / h).abs() < 1e-12);
        // WORKLOADS.md: P(rank 1) ≈ 15 %, top 10 ≈ 41 %, top 100 ≈ 65 %.
        assert!((z.p(1) - 0.15).abs() < 0.01, "P(1) = {}", z.p(1));
        let top = |k: usize| (1..=k).map(|r| z.p(r)).sum::<f64>();
        assert!((top(10) - 0.41).abs() < 0.01, "top 10 = {}", top(10));
        assert!((top(100) - 0.65).abs() < 0.01, "top 100 = {}", top(100));
        assert_eq!(z.n(), SKUS);
    }

    #[test]
    fn the_alias_table_gives_every_rank_its_probability() {
        for n in [1, 2, 3, 100, SKUS] {
            let z = Zipf::new(n, ZIPF_S);
            let mut implied = vec![0.0; n];
            for i in 0..n {
                implied[i] += z.prob[i] / n as f64;
                implied[z.alias[i] as usize] += (1.0 - z.prob[i]) / n as f64;
            }
            for r in 1..=n {
                let (got, want) = (implied[r - 1], z.p(r));
                assert!(
                    (got - want).abs() <= 1e-12 + want * 1e-9,
                    "n {n}, rank {r}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn sampler_frequencies() {
        let z = Zipf::new(SKUS, ZIPF_S);
        let mut rng = rng(0, 0);
        let draws = 200_000;
        let mut counts = vec![0u32; SKUS + 1];
        for _ in 0..draws {
            let r = z.sample(&mut rng);
            assert!((1..=SKUS).contains(&r));
            counts[r] += 1;
        }
        let f = |r: usize| f64::from(counts[r]) / draws as f64;
        // Standard deviation of the rank-1 frequency is sqrt(p(1-p)/n) ≈ 0.0008.
        assert!(
            (f(1) - z.p(1)).abs() < 0.005,
            "rank 1: {} vs {}",
            f(1),
            z.p(1)
        );
        assert!((f(1) - 0.15).abs() < 0.01);
        assert!(
            (f(2) - z.p(2)).abs() < 0.005,
            "rank 2: {} vs {}",
            f(2),
            z.p(2)
        );
        let top10: u32 = counts[1..=10].iter().sum();
        assert!((f64::from(top10) / draws as f64 - 0.41).abs() < 0.015);
        // The tail is reached.
        assert!(counts[1_000..].iter().any(|&c| c > 0));
    }

    #[test]
    fn sampler_is_reproducible() {
        let z = Zipf::new(100, ZIPF_S);
        let a: Vec<usize> = (0..1000)
            .scan(rng(3, 7), |r, _| Some(z.sample(r)))
            .collect();
        let b: Vec<usize> = (0..1000)
            .scan(rng(3, 7), |r, _| Some(z.sample(r)))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn w2_lines_are_distinct_sorted_and_in_range() {
        let w = Workload::new(SKUS);
        let mut rng = rng(1, 0);
        let mut qty_seen = [false; 4];
        for _ in 0..50_000 {
            let lines = w.w2_lines(&mut rng);
            assert!(
                lines[0].0 < lines[1].0 && lines[1].0 < lines[2].0,
                "{lines:?}"
            );
            for &(r, q) in &lines {
                assert!((1..=SKUS).contains(&r));
                assert!((1..=3).contains(&q));
                qty_seen[q as usize] = true;
            }
        }
        assert!(qty_seen[1] && qty_seen[2] && qty_seen[3]);
        // Distinctness also holds when collisions are frequent.
        let small = Zipf::new(3, ZIPF_S);
        for _ in 0..1_000 {
            let mut d = small.sample_distinct::<3, _>(&mut rng);
            d.sort_unstable();
            assert_eq!(d, [1, 2, 3]);
        }
    }

    #[test]
    fn requests_have_the_workload_shape() {
        let w = Workload::new(SKUS);
        let mut rng = rng(2, 0);
        assert_eq!(sku_name(1), "sku-00001");
        assert_eq!(sku_name(10_000), "sku-10000");
        let Command::Reserve { lines, .. } = w.w1(&mut rng).command else {
            panic!("reserve")
        };
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].quantity, 1);
        let Command::Reserve { lines, .. } = w.w2(&mut rng).command else {
            panic!("reserve")
        };
        assert_eq!(lines.len(), 3);
        assert!(
            lines.windows(2).all(|p| p[0].sku < p[1].sku),
            "ascending SKU order"
        );
    }

    #[test]
    fn setup_and_reserve_on_a_small_engine() {
        let w = Workload::new(50);
        let engine = Engine::start(depot_engine::EngineConfig {
            shards: 2,
            limits: depot_engine::Limits::default(),
        });
        w.setup_engine(&engine, 100);
        let mut rng = rng(0, 0);
        let reqs = w.batch(W::W2, 20, &mut rng);
        let units: Vec<i64> = reqs.iter().map(units).collect();
        let answers = engine.execute(reqs, 2);
        let mut t = Tally::default();
        for (u, (resp, _)) in units.iter().zip(&answers) {
            t.count(*u, &resp.outcome);
        }
        assert_eq!(t.ok, 20);
        let c = w.check_engine(&engine);
        assert_eq!(c.skus_read, 50);
        assert_eq!(c.available + c.reserved, 50 * 100);
        assert_eq!(c.reserved, t.units);
        assert!(c.min_available >= 0);
        let mut m = Machine::new(depot_engine::Limits::default(), 1);
        w.setup_machine(&mut m, 100);
    }
}

// The HTTP load generator (`http_load`) and the peer comparison (`compare`).
pub mod cli;
pub mod floor;
pub mod http;
pub mod inproc;
pub mod load;
pub mod pg_peer;
pub mod procs;
pub mod redis_peer;
pub mod report;
pub mod resp;
pub mod sellout;
pub mod wire;
