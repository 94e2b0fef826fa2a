//! Summary statistics over the runs: minimum, median and 90th percentile, and
//! the spread of a set of runs. Shared by the three benchmark programs.

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
        let rank = (v.len() * 9).div_ceil(10).max(1);
        Some(Summary { min: v[0], median: median_of_sorted(&v), p90: v[rank - 1] })
    }
}

fn median_of_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median of `values` (the mean of the two middle ones for an even
/// count); NaN when there are none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    median_of_sorted(&v)
}

/// How far apart the runs are: (max - min) / median, in percent; `None`
/// with fewer than two runs.
pub fn spread_percent(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    Some((hi - lo) / median(values) * 100.0)
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

    #[test]
    fn median_and_spread() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread_percent(&[5.0]), None);
        assert_eq!(spread_percent(&[90.0, 110.0, 100.0]), Some(20.0));
    }
}
