//! A local OpenTelemetry collector: an HTTP server that accepts OTLP/HTTP JSON trace exports
//! (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) and hands the spans to the test.

use std::collections::BTreeMap;

use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// One exported span, flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_id: String,
    pub attributes: BTreeMap<String, String>,
    /// Event names (log lines inside the span).
    pub events: Vec<String>,
}

#[derive(Debug)]
pub struct Collector {
    runtime: tokio::runtime::Runtime,
    server: MockServer,
}

impl Default for Collector {
    fn default() -> Collector {
        Collector::start()
    }
}

impl Collector {
    pub fn start() -> Collector {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime.block_on(MockServer::start());
        let accept = Mock::given(method("POST"))
            .and(path("/v1/traces"))
            .respond_with(ResponseTemplate::new(200).set_body_string("{}"));
        runtime.block_on(accept.mount(&server));
        Collector { runtime, server }
    }

    /// The environment that makes a `pipelines` process export its spans here, quickly.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.server.uri()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        let requests = self
            .runtime
            .block_on(self.server.received_requests())
            .unwrap_or_default();
        let mut spans = Vec::new();
        for request in requests {
            let body: Value = serde_json::from_slice(&request.body)
                .unwrap_or_else(|err| panic!("an export that is not JSON ({err})"));
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = attributes(&resource["resource"]["attributes"])
                    .remove("service.name")
                    .unwrap_or_default();
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        spans.push(Span {
                            service: service.clone(),
                            name: text(&span["name"]),
                            trace_id: text(&span["traceId"]),
                            span_id: text(&span["spanId"]),
                            parent_id: text(&span["parentSpanId"]),
                            attributes: attributes(&span["attributes"]),
                            events: span["events"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|event| text(&event["name"]))
                                .collect(),
                        });
                    }
                }
            }
        }
        spans
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// OTLP JSON attributes (`[{"key", "value": {"stringValue"|"intValue"|...}}]`) as strings.
fn attributes(value: &Value) -> BTreeMap<String, String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|attribute| {
            let value = &attribute["value"];
            let shown = ["stringValue", "intValue", "boolValue", "doubleValue"]
                .iter()
                .find_map(|kind| value.get(*kind))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_default();
            (text(&attribute["key"]), shown)
        })
        .collect()
}
