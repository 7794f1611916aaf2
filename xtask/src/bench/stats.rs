//! Order statistics of measured samples, and the seeded random numbers the load generator
//! draws its arrival times from.

/// The `q`-th percentile (0–100) of `values` by nearest rank (a value that was measured, never
/// an interpolation); NaN if there are none.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median by nearest rank: the middle value, the lower middle one of an even count.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// The arithmetic mean; NaN if there are no values.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Repetitions of one figure: their median, least and greatest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let (min, max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        Self { median: median(values), min, max, count: values.len() }
    }

    /// The median shown by `show`, and the range beside it when the values differ as shown:
    /// `82.61 ms (80.12 ms–85.30 ms)`.
    pub fn show(&self, show: &dyn Fn(f64) -> String) -> String {
        let (min, max) = (show(self.min), show(self.max));
        if min == max {
            show(self.median)
        } else {
            format!("{} ({min}–{max})", show(self.median))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
    }

    #[test]
    fn spreads_show_the_median_and_the_range() {
        let spread = Spread::of(&[3.0, 9.0, 4.0]);
        assert_eq!(spread, Spread { median: 4.0, min: 3.0, max: 9.0, count: 3 });
        assert_eq!(spread.show(&|v| format!("{v} s")), "4 s (3 s–9 s)");
        assert_eq!(Spread::of(&[2.0]).show(&|v| format!("{v} s")), "2 s");
        assert_eq!(Spread::of(&[2.01, 1.99]).show(&|v| format!("{v:.0} s")), "2 s");
    }
}
