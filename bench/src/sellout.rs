//! W3's client-side sampler (`shared/workloads/WORKLOADS.md`, "W3 — contention sell-out"):
//! each logical client keeps the set A of SKUs it has not yet seen sold out and draws from A
//! with P ∝ rank^-1.1 (Zipf restricted to A); an "insufficient" answer removes the SKU.

use crate::ZIPF_S;
use rand::Rng;

/// N of W3.
pub const W3_SKUS: usize = 100;
/// `available` of every W3 SKU at the start.
pub const W3_STOCK: i64 = 1_000;

/// One W3 client's set A with its weights.
#[derive(Debug, Clone)]
pub struct SellOut {
    /// (rank, rank^-s) of every SKU still in A, in rank order.
    left: Vec<(usize, f64)>,
    total: f64,
}

impl SellOut {
    /// A client over ranks 1..=n, all in A.
    pub fn new(n: usize) -> SellOut {
        let left: Vec<(usize, f64)> = (1..=n).map(|r| (r, (r as f64).powf(-ZIPF_S))).collect();
        let total = left.iter().map(|l| l.1).sum();
        SellOut { left, total }
    }

    /// Whether A is empty (the client stops).
    pub fn is_done(&self) -> bool {
        self.left.is_empty()
    }

    /// SKUs still in A.
    pub fn len(&self) -> usize {
        self.left.len()
    }

    pub fn is_empty(&self) -> bool {
        self.left.is_empty()
    }

    /// Draws a rank from A with P ∝ rank^-s; `None` when A is empty.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        let last = self.left.last()?;
        let mut u = rng.gen::<f64>() * self.total;
        for &(r, w) in &self.left {
            if u < w {
                return Some(r);
            }
            u -= w;
        }
        // Rounding left u just above the sum: the last rank.
        Some(last.0)
    }

    /// The SKU of `rank` answered "insufficient": removes it from A.
    pub fn sold_out(&mut self, rank: usize) {
        if let Some(i) = self.left.iter().position(|l| l.0 == rank) {
            self.left.remove(i);
            // Re-summed rather than subtracted, so rounding never drifts.
            self.total = self.left.iter().map(|l| l.1).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_restricted_law_and_removal_works() {
        let mut s = SellOut::new(4);
        let mut rng = crate::rng(9, 9);
        let draws = 100_000;
        let mut counts = [0u32; 5];
        for _ in 0..draws {
            counts[s.sample(&mut rng).expect("non-empty")] += 1;
        }
        let w: Vec<f64> = (1..=4).map(|r| (r as f64).powf(-ZIPF_S)).collect();
        let total: f64 = w.iter().sum();
        for r in 1..=4 {
            let f = f64::from(counts[r]) / draws as f64;
            assert!((f - w[r - 1] / total).abs() < 0.01, "rank {r}: {f}");
        }
        s.sold_out(1);
        s.sold_out(1); // twice: no effect
        assert_eq!(s.len(), 3);
        for _ in 0..1_000 {
            assert_ne!(s.sample(&mut rng), Some(1));
        }
        s.sold_out(2);
        s.sold_out(3);
        s.sold_out(4);
        assert!(s.is_done());
        assert_eq!(s.sample(&mut rng), None);
    }
}
