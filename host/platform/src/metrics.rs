//! Prometheus metrics served on the admin listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    pub bucket: String,
}

/// Blob bytes moved, per bucket. The blob store owns these (it counts
/// every transfer, whoever asks: a component or the convert worker) and
/// exists before the registry, which registers them at its creation.
#[derive(Clone, Default)]
pub struct BlobMetrics {
    written: Family<BucketLabels, Counter>,
    read: Family<BucketLabels, Counter>,
}

impl BlobMetrics {
    /// The counter of bytes stored into `bucket` (files completely written).
    pub fn bytes_in(&self, bucket: &str) -> Counter {
        self.written.get_or_create(&bucket_labels(bucket)).clone()
    }

    /// The counter of bytes read out of `bucket` (chunks delivered).
    pub fn bytes_out(&self, bucket: &str) -> Counter {
        self.read.get_or_create(&bucket_labels(bucket)).clone()
    }

    /// Makes `bucket`'s series exist, so they show (at 0) before any traffic.
    pub fn declare(&self, bucket: &str) {
        self.bytes_in(bucket);
        self.bytes_out(bucket);
    }
}

fn bucket_labels(bucket: &str) -> BucketLabels {
    BucketLabels {
        bucket: bucket.to_string(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeployLabels {
    pub component: String,
    pub outcome: &'static str,
}

/// How a deploy or rollback through this host ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeployOutcome {
    /// A deploy (`spindle deploy`, or `up --watch`) now serves, or
    /// already did.
    Deployed,
    /// Refused (it does not compile, link or fit its grants, or there is no
    /// version to roll back to); the running version serves on.
    Refused,
    /// A rollback now serves the version before.
    RolledBack,
    /// The deploy store failed; nothing changed.
    Failed,
}

impl DeployOutcome {
    const ALL: [DeployOutcome; 4] = [
        DeployOutcome::Deployed,
        DeployOutcome::Refused,
        DeployOutcome::RolledBack,
        DeployOutcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            DeployOutcome::Deployed => "deployed",
            DeployOutcome::Refused => "refused",
            DeployOutcome::RolledBack => "rolled_back",
            DeployOutcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// The convert worker's counts: conversions by outcome, ffmpeg's time and
/// the seconds of media converted. Every outcome's series exists from
/// creation.
#[derive(Clone, Debug)]
pub struct ConversionMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    media_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl Default for ConversionMetrics {
    fn default() -> Self {
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["done", "failed", "retried"] {
            let _ = outcomes.get_or_create(&OutcomeLabels { outcome });
        }
        ConversionMetrics {
            outcomes,
            // 0.1 s .. ~55 min
            duration: Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            media_seconds: Counter::default(),
        }
    }
}

impl ConversionMetrics {
    /// A conversion ended `done` (`outcome = "done"`), `failed` or will be
    /// `retried`.
    pub fn ended(&self, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// ffmpeg converted `media_seconds` of media in `took`.
    pub fn converted(&self, took: Duration, media_seconds: Option<f64>) {
        self.duration.observe(took.as_secs_f64());
        if let Some(seconds) = media_seconds.filter(|s| s.is_finite() && *s > 0.0) {
            self.media_seconds.inc_by(seconds);
        }
    }
}

pub struct Metrics {
    /// Locked only to register a late family (the convert worker's) and to
    /// encode a scrape.
    registry: std::sync::Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ComponentLabels, Histogram>,
    instantiation: Family<ComponentLabels, Histogram>,
    queue: QueueFamilies,
    deploys: Family<DeployLabels, Counter>,
}

/// Per-queue message counts of the queue triggers.
struct QueueFamilies {
    consumed: Family<QueueLabels, Counter>,
    acked: Family<QueueLabels, Counter>,
    retried: Family<QueueLabels, Counter>,
    dead_lettered: Family<QueueLabels, Counter>,
    in_flight: Family<QueueLabels, Gauge>,
    duration: Family<QueueLabels, Histogram>,
}

/// One queue's metrics, shared by every delivery its trigger handles.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    pub consumed: Counter,
    pub acked: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub in_flight: Gauge,
    pub duration: Histogram,
}

fn seconds_histogram() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Metrics {
    /// The registry, with the blob store's counters among its families.
    pub fn new(blobs: &BlobMetrics) -> Self {
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
        let queue = QueueFamilies {
            consumed: Family::default(),
            acked: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            in_flight: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
        };
        registry.register(
            "queue_messages_consumed",
            "Messages a queue trigger took, by queue (every delivery, redeliveries included)",
            queue.consumed.clone(),
        );
        registry.register(
            "queue_messages_acked",
            "Messages handled and acknowledged, by queue",
            queue.acked.clone(),
        );
        registry.register(
            "queue_messages_retried",
            "Deliveries that failed and will be retried, by queue",
            queue.retried.clone(),
        );
        registry.register(
            "queue_messages_dead_lettered",
            "Messages sent to the dead-letter queue, by queue",
            queue.dead_lettered.clone(),
        );
        registry.register(
            "queue_messages_in_flight",
            "Messages being handled now, by queue",
            queue.in_flight.clone(),
        );
        registry.register(
            "queue_handler_duration_seconds",
            "Time to handle one delivery, by queue",
            queue.duration.clone(),
        );
        registry.register(
            "blob_written_bytes",
            "Bytes stored into blob files, by bucket (counted when a file is complete)",
            blobs.written.clone(),
        );
        registry.register(
            "blob_read_bytes",
            "Bytes read out of blob files, by bucket",
            blobs.read.clone(),
        );
        let deploys = Family::<DeployLabels, Counter>::default();
        registry.register(
            "deploys",
            "Deploys and rollbacks through this host, by component and outcome (deployed, refused, rolled_back, failed)",
            deploys.clone(),
        );
        Metrics {
            registry: std::sync::Mutex::new(registry),
            requests,
            latency,
            instantiation,
            queue,
            deploys,
        }
    }

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

    /// The metrics of `queue`; its series exist from this call on, so they
    /// show (at 0) before any message arrives.
    pub fn queue(&self, queue: &str) -> QueueMetrics {
        let labels = QueueLabels {
            queue: queue.to_string(),
        };
        let families = &self.queue;
        QueueMetrics {
            consumed: families.consumed.get_or_create(&labels).clone(),
            acked: families.acked.get_or_create(&labels).clone(),
            retried: families.retried.get_or_create(&labels).clone(),
            dead_lettered: families.dead_lettered.get_or_create(&labels).clone(),
            in_flight: families.in_flight.get_or_create(&labels).clone(),
            duration: families.duration.get_or_create(&labels).clone(),
        }
    }

    /// Makes `component`'s deploy series, at 0 for every outcome, so they
    /// show before its first deploy.
    pub fn start_deploy_series(&self, component: &str) {
        for outcome in DeployOutcome::ALL {
            self.deploy_counter(component, outcome);
        }
    }

    pub fn record_deploy(&self, component: &str, outcome: DeployOutcome) {
        self.deploy_counter(component, outcome).inc();
    }

    fn deploy_counter(&self, component: &str, outcome: DeployOutcome) -> Counter {
        self.deploys
            .get_or_create(&DeployLabels {
                component: component.to_string(),
                outcome: outcome.label(),
            })
            .clone()
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Adds the convert worker's families (it is built before the host's
    /// registry, to check ffmpeg first).
    pub fn register_conversions(&self, conversions: &ConversionMetrics) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        registry.register(
            "conversions",
            "Conversions this process ended, by outcome (done, failed, retried)",
            conversions.outcomes.clone(),
        );
        registry.register(
            "conversion_duration_seconds",
            "Time ffmpeg took for one conversion",
            conversions.duration.clone(),
        );
        registry.register(
            "conversion_media_seconds",
            "Seconds of media converted",
            conversions.media_seconds.clone(),
        );
    }
}
