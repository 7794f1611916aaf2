//! A small deterministic generator (SplitMix64) for tests and benchmarks, so that a failure or
//! a load plan can be replayed from its seed. Any seed works, zero included.

/// The generator's state.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with mean `1 / rate`: the gap between Poisson arrivals.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.next_f64()).ln() / rate
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let radius = (-2.0 * (1.0 - self.next_f64()).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.next_f64()).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean(values: &[f64]) -> f64 {
        values.iter().sum::<f64>() / values.len() as f64
    }

    #[test]
    fn the_sequence_is_fixed_by_the_seed_and_the_distributions_have_their_moments() {
        let draw = |seed| {
            let mut rng = Rng(seed);
            (0..5).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(0), draw(1));
        assert!(draw(0).iter().all(|&x| x != 0), "a zero seed works");
        let mut rng = Rng(42);
        let gaps: Vec<f64> = (0..20_000).map(|_| rng.exponential(4.0)).collect();
        assert!(gaps.iter().all(|g| *g >= 0.0 && g.is_finite()));
        assert!((mean(&gaps) - 0.25).abs() < 0.01, "mean gap {}", mean(&gaps));
        let normal: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        let variance = mean(&normal.iter().map(|x| x * x).collect::<Vec<_>>());
        assert!(mean(&normal).abs() < 0.03 && (variance - 1.0).abs() < 0.05, "{variance}");
    }
}
