//! The convert worker: consumes `video` messages, runs ffmpeg (libmp3lame)
//! on the stored video, streams the MP3 into the blob store, moves the job
//! through `processing` to `done` or `failed`, and publishes to `mp3`.
//!
//! It is a native worker, not a component, because it runs ffmpeg. The
//! manifest attaches it to a queue with `[[trigger.amqp]] worker =
//! "convert"`; `spindle up` runs it in-process (so embedded defaults need
//! nothing else), and `spindle-convert` runs it alone, e.g. as its own
//! Kubernetes Deployment next to hosts with `[convert] in_process = false`.

mod claim;
mod config;
mod ffmpeg;
mod job;
mod message;
mod progress;
pub mod sandbox;

pub use config::ConvertConfig;
pub use ffmpeg::{FfmpegError, MP3_OUTPUT_ARGS};
pub use job::{MP3_QUEUE, MP3S, VIDEOS};
pub use message::JobMessage;

use anyhow::Context;
use spindle_platform::capabilities::blobs::BlobStore;
use spindle_platform::capabilities::queue::{Broker, DeadLetterHook, Worker};
use spindle_platform::capabilities::variables::AppVariables;
use spindle_platform::manifest::{AmqpTarget, AmqpTrigger, Manifest};
use spindle_platform::metrics::ConversionMetrics;
use std::sync::Arc;
use std::time::Duration;

/// The name `[[trigger.amqp]] worker = "..."` uses for this worker.
pub const WORKER: &str = "convert";

/// The queues the worker publishes to (declared before it starts).
pub const PUBLISHES: &[&str] = &[MP3_QUEUE];

/// The application variable bounding the media converted, in seconds.
pub const MAX_DURATION_VARIABLE: &str = "max_duration_secs";

/// The application variable that keeps source videos after their job ends.
pub const KEEP_VIDEOS_VARIABLE: &str = "keep_videos";

/// Three hours, when the manifest does not declare [`MAX_DURATION_VARIABLE`].
const DEFAULT_MAX_DURATION_SECS: u64 = 3 * 3600;

/// What the application's variables decide for the worker.
#[derive(Debug, Clone, Copy)]
pub struct AppSettings {
    /// The longest media converted.
    pub max_duration: Duration,
    /// Whether a video keeps its bytes once its job is `done` or `failed`
    /// (by default only its record, the metadata, stays).
    pub keep_videos: bool,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            max_duration: Duration::from_secs(DEFAULT_MAX_DURATION_SECS),
            keep_videos: false,
        }
    }
}

/// The worker's settings from the application's variables (defaults for
/// those the manifest does not declare).
pub fn app_settings(variables: &AppVariables) -> anyhow::Result<AppSettings> {
    let mut settings = AppSettings::default();
    if let Some(raw) = variables.get(MAX_DURATION_VARIABLE) {
        let secs: u64 = raw.trim().parse().ok().filter(|s| *s > 0).with_context(|| {
            format!("the variable {MAX_DURATION_VARIABLE} must be a whole number of seconds above 0, not {raw:?}")
        })?;
        settings.max_duration = Duration::from_secs(secs);
    }
    if let Some(raw) = variables.get(KEEP_VIDEOS_VARIABLE) {
        settings.keep_videos = match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" | "" => false,
            _ => anyhow::bail!(
                "the variable {KEEP_VIDEOS_VARIABLE} must be true or false, not {raw:?}"
            ),
        };
    }
    Ok(settings)
}

/// The manifest's trigger for this worker, with `[convert] concurrency`
/// applied when set.
pub fn trigger(manifest: &Manifest, config: &ConvertConfig) -> Option<AmqpTrigger> {
    let mut trigger = manifest
        .amqp_triggers
        .iter()
        .find(|t| t.target() == AmqpTarget::Worker(WORKER))?
        .clone();
    if let Some(concurrency) = config.concurrency {
        trigger.concurrency = concurrency;
    }
    Some(trigger)
}

/// Checks ffmpeg and builds the worker for its trigger: the handler and the
/// dead-letter hook that marks given-up jobs failed.
pub async fn worker(
    blobs: BlobStore,
    broker: Broker,
    config: &ConvertConfig,
    trigger: &AmqpTrigger,
    settings: AppSettings,
    metrics: ConversionMetrics,
) -> anyhow::Result<Worker> {
    let limits = ffmpeg::Limits {
        time_limit: config.time_limit(),
        max_duration: settings.max_duration,
        memory_bytes: config.memory_limit_mb.saturating_mul(1 << 20),
    };
    let (ffmpeg, version) =
        ffmpeg::Ffmpeg::check(&config.ffmpeg, &config.ffprobe(), limits).await?;
    let work_dir = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating the convert work_dir {}", work_dir.display()))?;
    tracing::info!(
        queue = %trigger.queue,
        concurrency = trigger.concurrency,
        time_limit_secs = config.time_limit_secs,
        max_duration_secs = settings.max_duration.as_secs(),
        keep_videos = settings.keep_videos,
        "convert worker ready: {version}"
    );
    tracing::info!("{}", ffmpeg.sandbox().describe());
    let converter = Arc::new(job::Converter {
        blobs,
        broker,
        ffmpeg,
        work_dir,
        keep_videos: settings.keep_videos,
        metrics,
    });
    let hook = converter.clone();
    Ok(Worker {
        handler: Arc::new(move |delivery| {
            let converter = converter.clone();
            Box::pin(async move { converter.handle(delivery).await })
        }),
        on_dead_letter: Some(DeadLetterHook(Arc::new(move |delivery, reason| {
            let converter = hook.clone();
            Box::pin(async move { converter.dead_lettered(delivery, reason).await })
        }))),
    })
}
