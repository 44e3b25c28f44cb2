//! A latency histogram with fixed buckets, and its Prometheus text form.
//!
//! Used for the API's requests (per route, method and status) and for the
//! calls a node makes to its peers (per peer and route). Buckets are the
//! same everywhere, so dashboards can compare them.

use std::fmt::Write as _;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counts of observations at or below each bound, their count and sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub count: u64,
    pub sum_s: f64,
    /// Cumulative: `buckets[i]` counts observations `<= BUCKETS_S[i]`.
    pub buckets: [u64; BUCKETS_S.len()],
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        self.count += 1;
        self.sum_s += seconds;
        for (bucket, bound) in self.buckets.iter_mut().zip(BUCKETS_S) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// Appends this histogram's samples (`_bucket`, `_sum`, `_count`) for
    /// metric `name` with the given label text (`a="x",b="y"`, or empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (count, bound) in self.buckets.iter().zip(BUCKETS_S) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |text: &str| {
            if text.is_empty() {
                String::new()
            } else {
                format!("{{{text}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum_s);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_rendered_with_inf() {
        let mut h = Histogram::default();
        h.observe(0.0004);
        h.observe(0.02);
        h.observe(9.0);
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[5], 2, "0.025 holds 0.0004 and 0.02");
        assert_eq!(h.buckets[11], 2, "9 s is above every bound");
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "peer=\"n2\"");
        assert!(out.contains("x_seconds_bucket{peer=\"n2\",le=\"0.0005\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{peer=\"n2\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count{peer=\"n2\"} 3\n"));
        let mut bare = String::new();
        h.render(&mut bare, "y", "");
        assert!(bare.contains("y_bucket{le=\"+Inf\"} 3\n") && bare.contains("\ny_sum 9.02"));
    }
}
