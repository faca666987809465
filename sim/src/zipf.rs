//! A bounded Zipf sampler: rank r in 1..=N drawn with probability r^-s / Σ k^-s, from a
//! precomputed CDF by binary search. Seeded through the caller's RNG, so it is deterministic.

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Zipf {
    /// `cdf[i]` = P(rank <= i + 1); the last entry is exactly 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// Zipf over `n >= 1` ranks with skew `s >= 0` (0 is uniform). `n == 0` is treated as 1.
    pub fn new(n: usize, s: f64) -> Zipf {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for r in 1..=n {
            acc += (r as f64).powf(-s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        cdf[n - 1] = 1.0;
        Zipf { cdf }
    }

    pub fn n(&self) -> usize {
        self.cdf.len()
    }

    /// A rank in 1..=N.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.gen();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
            + 1
    }

    /// A rank in 1..=min(limit, N): the distribution restricted to the `limit` most popular.
    pub fn sample_top<R: Rng + ?Sized>(&self, rng: &mut R, limit: usize) -> usize {
        let limit = limit.clamp(1, self.n());
        let u: f64 = rng.gen::<f64>() * self.cdf[limit - 1];
        self.cdf.partition_point(|&c| c <= u).min(limit - 1) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rank_one_is_the_most_frequent_and_top_limits_hold() {
        let z = Zipf::new(100, 1.2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut counts = [0u32; 101];
        for _ in 0..20_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(counts[1] > counts[2] && counts[2] > counts[10]);
        assert_eq!(counts[0], 0);
        for _ in 0..1_000 {
            assert!(z.sample_top(&mut rng, 3) <= 3);
        }
    }
}
