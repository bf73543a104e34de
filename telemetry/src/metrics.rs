//! A small metrics registry rendered in the Prometheus text format (version 0.0.4):
//! counters, gauges and histograms with labels. Updates take a lock; they happen per job or
//! per batch, far below the rate where that matters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Seconds: from a no-op job to a long apply.
pub const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

type Labels = Vec<(String, String)>;

#[derive(Debug)]
enum Series {
    Counter(BTreeMap<Labels, f64>),
    Gauge(BTreeMap<Labels, f64>),
    Histogram(&'static [f64], BTreeMap<Labels, Histogram>),
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    series: Series,
}

/// The registry of one process. Cheap to clone; clones share the values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    families: Arc<Mutex<BTreeMap<&'static str, Family>>>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Family>> {
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn counter(&self, name: &'static str, help: &'static str) {
        self.lock().entry(name).or_insert(Family {
            help,
            series: Series::Counter(BTreeMap::new()),
        });
    }

    pub fn gauge(&self, name: &'static str, help: &'static str) {
        self.lock().entry(name).or_insert(Family {
            help,
            series: Series::Gauge(BTreeMap::new()),
        });
    }

    pub fn histogram(&self, name: &'static str, help: &'static str, buckets: &'static [f64]) {
        self.lock().entry(name).or_insert(Family {
            help,
            series: Series::Histogram(buckets, BTreeMap::new()),
        });
    }

    /// Adds `by` to a counter (declared with [`Self::counter`]).
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], by: f64) {
        if let Some(Family {
            series: Series::Counter(values),
            ..
        }) = self.lock().get_mut(name)
        {
            *values.entry(labels(pairs)).or_default() += by;
        }
    }

    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, pairs, 1.0);
    }

    /// Sets a gauge (declared with [`Self::gauge`]).
    pub fn set(&self, name: &'static str, pairs: &[(&str, &str)], value: f64) {
        if let Some(Family {
            series: Series::Gauge(values),
            ..
        }) = self.lock().get_mut(name)
        {
            values.insert(labels(pairs), value);
        }
    }

    /// Replaces every series of a gauge: for values recomputed as a whole (jobs in flight per
    /// account), so that a series that went to nothing does not linger.
    pub fn set_all(&self, name: &'static str, values: Vec<(Vec<(&str, &str)>, f64)>) {
        if let Some(Family {
            series: Series::Gauge(series),
            ..
        }) = self.lock().get_mut(name)
        {
            series.clear();
            for (pairs, value) in values {
                series.insert(labels(&pairs), value);
            }
        }
    }

    /// Records one observation in a histogram (declared with [`Self::histogram`]).
    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], value: f64) {
        if let Some(Family {
            series: Series::Histogram(bounds, values),
            ..
        }) = self.lock().get_mut(name)
        {
            let histogram = values.entry(labels(pairs)).or_insert_with(|| Histogram {
                buckets: vec![0; bounds.len()],
                ..Histogram::default()
            });
            for (bucket, bound) in histogram.buckets.iter_mut().zip(bounds.iter()) {
                if value <= *bound {
                    *bucket += 1;
                }
            }
            histogram.count += 1;
            histogram.sum += value;
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in self.lock().iter() {
            let kind = match family.series {
                Series::Counter(_) => "counter",
                Series::Gauge(_) => "gauge",
                Series::Histogram(..) => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            match &family.series {
                Series::Counter(values) | Series::Gauge(values) => {
                    for (labels, value) in values {
                        let _ = writeln!(
                            out,
                            "{name}{} {}",
                            format_labels(labels, None),
                            number(*value)
                        );
                    }
                }
                Series::Histogram(bounds, values) => {
                    for (labels, histogram) in values {
                        for (bound, count) in bounds.iter().zip(&histogram.buckets) {
                            let le = number(*bound);
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {count}",
                                format_labels(labels, Some(&le))
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {}",
                            format_labels(labels, Some("+Inf")),
                            histogram.count
                        );
                        let _ = writeln!(
                            out,
                            "{name}_sum{} {}",
                            format_labels(labels, None),
                            number(histogram.sum)
                        );
                        let _ = writeln!(
                            out,
                            "{name}_count{} {}",
                            format_labels(labels, None),
                            histogram.count
                        );
                    }
                }
            }
        }
        out
    }
}

fn format_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_prometheus_text_format() {
        let metrics = Metrics::default();
        metrics.counter("jobs_total", "Jobs finished.");
        metrics.gauge("in_flight", "Jobs running.");
        metrics.histogram("duration_seconds", "How long jobs took.", &[1.0, 10.0]);
        metrics.inc(
            "jobs_total",
            &[("action", "apply"), ("status", "succeeded")],
        );
        metrics.add(
            "jobs_total",
            &[("action", "apply"), ("status", "succeeded")],
            2.0,
        );
        metrics.set("in_flight", &[], 3.0);
        metrics.observe("duration_seconds", &[("action", "plan")], 0.5);
        metrics.observe("duration_seconds", &[("action", "plan")], 5.0);
        metrics.inc("undeclared", &[]);
        let text = metrics.render();
        assert!(
            text.contains(
                "# TYPE jobs_total counter\njobs_total{action=\"apply\",status=\"succeeded\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("in_flight 3\n"), "{text}");
        assert!(
            text.contains("duration_seconds_bucket{action=\"plan\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("duration_seconds_bucket{action=\"plan\",le=\"10\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("duration_seconds_bucket{action=\"plan\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("duration_seconds_sum{action=\"plan\"} 5.5\n"),
            "{text}"
        );
        assert!(!text.contains("undeclared"), "{text}");
    }

    #[test]
    fn set_all_drops_series_that_went_away() {
        let metrics = Metrics::default();
        metrics.gauge("in_flight", "Jobs in flight.");
        metrics.set_all(
            "in_flight",
            vec![
                (vec![("account", "dev")], 2.0),
                (vec![("account", "prod")], 1.0),
            ],
        );
        metrics.set_all("in_flight", vec![(vec![("account", "prod")], 0.0)]);
        let text = metrics.render();
        assert!(
            !text.contains("dev") && text.contains("in_flight{account=\"prod\"} 0"),
            "{text}"
        );
    }
}
