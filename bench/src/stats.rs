//! Summary statistics over the runs: minimum, median and 90th percentile.

/// The minimum, median and 90th percentile of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The smallest value.
    pub min: f64,
    /// The median (the mean of the two middle values when the count is even).
    pub median: f64,
    /// The 90th percentile by the nearest-rank method: the value at rank ⌈0.9 n⌉.
    pub p90: f64,
}

impl Summary {
    /// Summarizes `values`; `None` when there are none or one is not a number.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        let rank = (n * 9).div_ceil(10).max(1);
        Some(Summary { min: v[0], median, p90: v[rank - 1] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        assert_eq!(Summary::of(&[]), None);
        let s = Summary::of(&[3.0]).unwrap();
        assert_eq!((s.min, s.median, s.p90), (3.0, 3.0, 3.0));
        let v: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.min, s.median, s.p90), (1.0, 10.5, 18.0));
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Summary::of(&v).unwrap().p90, 9.0);
    }
}
