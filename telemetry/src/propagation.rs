//! W3C trace context (`traceparent`, `tracestate`) in message headers: the publisher writes
//! its current span's context, the consumer makes it the parent of the span that handles the
//! message. A run's messages thus form one trace across every process.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries the trace and parent span ids.
pub const TRACEPARENT: &str = "traceparent";

struct Writer<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Writer<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct Reader<'a>(&'a BTreeMap<String, String>);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the context of `span` into `headers`.
pub fn inject(span: &tracing::Span, headers: &mut BTreeMap<String, String>) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Writer(headers));
    });
}

/// The current span's context, as headers for a message.
pub fn current_headers() -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    inject(&tracing::Span::current(), &mut headers);
    headers
}

/// Makes the context in `headers` (if any) the parent of `span`.
pub fn set_parent(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    if !headers.contains_key(TRACEPARENT) {
        return;
    }
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Reader(headers))
    });
    let _ = span.set_parent(context);
}

/// The `traceparent` of `span`, to keep with state that outlives it (a run's jobs are
/// published long after the span that accepted the run has ended).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut headers = BTreeMap::new();
    inject(span, &mut headers);
    headers.remove(TRACEPARENT)
}

/// Headers carrying a kept `traceparent`.
pub fn headers_from(traceparent: Option<&str>) -> BTreeMap<String, String> {
    traceparent
        .map(|value| BTreeMap::from([(TRACEPARENT.to_owned(), value.to_owned())]))
        .unwrap_or_default()
}
