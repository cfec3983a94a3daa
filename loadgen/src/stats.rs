//! What a run counts: latency histograms (HDR, microsecond resolution) and the problems it saw.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency a histogram holds exactly (one hour); longer ones are recorded as this.
const MAX_MICROS: u64 = 3_600_000_000;

/// Problems kept as examples, so that a report can show what went wrong and not only how often.
const MAX_SAMPLES: usize = 8;

/// Longest example kept, in characters.
const SAMPLE_CHARS: usize = 200;

/// Latencies in microseconds, three significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so this cannot fail; saturate anyway rather than lose a run.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Percentiles, or `None` without samples.
    pub fn summary(&self) -> Option<Summary> {
        summarize(&self.0)
    }
}

/// Percentiles of a set of latencies, in milliseconds with microsecond resolution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Smallest.
    pub min_ms: f64,
}

/// Extracts percentiles from a histogram of microseconds.
pub fn summarize(h: &Histogram<u64>) -> Option<Summary> {
    if h.is_empty() {
        return None;
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    Some(Summary {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
        // Rounded to the microsecond, the resolution of everything else here.
        mean_ms: ms(h.mean().round() as u64),
        min_ms: ms(h.min()),
    })
}

/// Everything that was not a clean, successful job, by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Problems {
    /// `error` messages from the server, by code (`busy`, `unavailable`, …). Busy submits are retried.
    pub server_errors: BTreeMap<String, u64>,
    /// Results that ended other than `done`, by status.
    pub failed_jobs: BTreeMap<String, u64>,
    /// `done` results whose output is not n!, or whose `n` is not the one submitted.
    pub wrong_results: u64,
    /// Frames that are not a valid server message.
    pub malformed: u64,
    /// Valid messages that should not have come, by what they were.
    pub unexpected: BTreeMap<String, u64>,
    /// Connections that failed or dropped, HTTP errors, by kind.
    pub transport: BTreeMap<String, u64>,
    /// A few examples of the above, for diagnosis.
    pub samples: Vec<String>,
}

impl Problems {
    /// Counts one `error` from the server.
    pub fn server_error(&mut self, code: &str) {
        *self.server_errors.entry(code.to_owned()).or_default() += 1;
    }

    /// Counts one job that did not end `done`.
    pub fn failed(&mut self, status: &str, detail: &str) {
        *self.failed_jobs.entry(status.to_owned()).or_default() += 1;
        self.sample(&format!("{status}: {detail}"));
    }

    /// Counts one wrong result.
    pub fn wrong(&mut self, detail: &str) {
        self.wrong_results += 1;
        self.sample(&format!("wrong result: {detail}"));
    }

    /// Counts one frame that does not parse.
    pub fn malformed(&mut self, frame: &str, why: &str) {
        self.malformed += 1;
        self.sample(&format!("malformed ({why}): {frame}"));
    }

    /// Counts one message that should not have come.
    pub fn unexpected(&mut self, what: &str, frame: &str) {
        *self.unexpected.entry(what.to_owned()).or_default() += 1;
        self.sample(&format!("unexpected {what}: {frame}"));
    }

    /// Counts one transport problem.
    pub fn transport(&mut self, kind: &str, detail: &str) {
        *self.transport.entry(kind.to_owned()).or_default() += 1;
        self.sample(&format!("{kind}: {detail}"));
    }

    fn sample(&mut self, text: &str) {
        if self.samples.len() < MAX_SAMPLES {
            let mut chars = text.chars();
            let mut kept: String = chars.by_ref().take(SAMPLE_CHARS).collect();
            if chars.next().is_some() {
                kept.push('…');
            }
            // The same failure a thousand times is one example.
            if !self.samples.contains(&kept) {
                self.samples.push(kept);
            }
        }
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: Self) {
        let add = |into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>| {
            for (k, v) in from {
                *into.entry(k).or_default() += v;
            }
        };
        add(&mut self.server_errors, other.server_errors);
        add(&mut self.failed_jobs, other.failed_jobs);
        add(&mut self.unexpected, other.unexpected);
        add(&mut self.transport, other.transport);
        self.wrong_results += other.wrong_results;
        self.malformed += other.malformed;
        for sample in other.samples {
            if self.samples.len() < MAX_SAMPLES && !self.samples.contains(&sample) {
                self.samples.push(sample);
            }
        }
    }

    /// No problem at all, except `busy` answers (a client is expected to retry those, and this one does).
    pub fn is_clean(&self) -> bool {
        self.server_errors.keys().all(|code| code == "busy")
            && self.failed_jobs.is_empty()
            && self.wrong_results == 0
            && self.malformed == 0
            && self.unexpected.is_empty()
            && self.transport.is_empty()
    }

    /// Whether nothing at all was counted.
    pub fn is_empty(&self) -> bool {
        self.server_errors.is_empty() && self.is_clean()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut l = Latencies::default();
        assert_eq!(l.summary(), None);
        for micros in 1..=1000u64 {
            l.record(Duration::from_micros(micros));
        }
        let s = l.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_ms, 0.5);
        assert_eq!(s.p90_ms, 0.9);
        assert_eq!(s.p99_ms, 0.99);
        assert_eq!(s.max_ms, 1.0);
        assert_eq!(s.min_ms, 0.001);
        assert_eq!(s.mean_ms, 0.501);
    }

    #[test]
    fn three_significant_digits_and_merge() {
        let mut a = Latencies::default();
        a.record(Duration::from_micros(123_456));
        let mut b = Latencies::default();
        b.record(Duration::from_nanos(10)); // below the resolution: counted as 1 µs
        b.record(Duration::from_secs(10 * 3600)); // above the range: saturates
        a.merge(&b);
        let s = a.summary().unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.min_ms, 0.001);
        assert!((s.p50_ms - 123.456).abs() / 123.456 < 0.001, "{}", s.p50_ms);
        assert!(s.max_ms >= 3_600_000.0 * 0.999);
    }

    #[test]
    fn problems_count_merge_and_judge() {
        let mut p = Problems::default();
        assert!(p.is_empty() && p.is_clean());
        p.server_error("busy");
        assert!(!p.is_empty() && p.is_clean());
        let mut q = Problems::default();
        q.server_error("busy");
        q.malformed(&"x".repeat(500), "not JSON");
        q.malformed(&"x".repeat(500), "not JSON");
        p.merge(q);
        assert_eq!(p.server_errors["busy"], 2);
        assert_eq!(p.malformed, 2);
        assert!(!p.is_clean());
        assert_eq!(p.samples.len(), 1);
        assert!(p.samples[0].chars().count() <= SAMPLE_CHARS + 1);
    }
}
