//! Percentiles of latency samples.

use serde::{Deserialize, Serialize};

/// A summary of latency samples in microseconds, plus the failures beside them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Successful samples.
    pub n: usize,
    /// Failed attempts (not in the percentiles).
    pub errors: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Summary {
    pub fn of(samples: &[f64], errors: usize) -> Summary {
        if samples.is_empty() {
            return Summary {
                errors,
                ..Summary::default()
            };
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Summary {
            n: sorted.len(),
            errors,
            mean_us: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50_us: percentile(&sorted, 50.0),
            p95_us: percentile(&sorted, 95.0),
            p99_us: percentile(&sorted, 99.0),
            max_us: *sorted.last().unwrap_or(&0.0),
        }
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `a / b`, or NaN when either is missing.
pub fn ratio(a: f64, b: f64) -> f64 {
    if a.is_finite() && b.is_finite() && b > 0.0 && a > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// Microseconds for tables: `87 µs`, `1.23 ms`.
pub fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 100_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.0} ms", us / 1000.0)
    }
}

/// A ratio for tables: `31.2×`, `0.84×`.
pub fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() {
        "–".into()
    } else if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
    }
}
