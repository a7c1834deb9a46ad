//! Prometheus metrics served on the admin listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub component: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ComponentLabels, Histogram>,
    instantiation: Family<ComponentLabels, Histogram>,
}

fn seconds_histogram() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("spindle");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ComponentLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let instantiation = Family::<ComponentLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests handled, by component, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response headers, by component",
            latency.clone(),
        );
        registry.register(
            "instantiation_duration_seconds",
            "Time to create a component instance, by component",
            instantiation.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            instantiation,
        }
    }
}

impl Metrics {
    pub fn record_request(&self, component: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                component: component.into(),
                route: route.into(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&ComponentLabels {
                component: component.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_instantiation(&self, component: &str, elapsed: Duration) {
        self.instantiation
            .get_or_create(&ComponentLabels {
                component: component.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
