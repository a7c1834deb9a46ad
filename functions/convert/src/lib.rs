//! The convert worker: consumes `video` messages, runs ffmpeg (libmp3lame)
//! on the stored video, streams the MP3 into the blob store, moves the job
//! through `processing` to `done` or `failed`, and publishes to `mp3`.
//!
//! It is a native worker, not a component, because it runs ffmpeg. The
//! manifest attaches it to a queue with `[[trigger.amqp]] worker =
//! "convert"`; `spindle up` runs it in-process (so embedded defaults need
//! nothing else), and `spindle-convert` runs it alone, e.g. as its own
//! Kubernetes Deployment next to hosts with `[convert] in_process = false`.

mod config;
mod ffmpeg;
mod job;
mod message;

pub use config::ConvertConfig;
pub use ffmpeg::{FfmpegError, MP3_OUTPUT_ARGS};
pub use job::{MP3_QUEUE, MP3S, VIDEOS};
pub use message::JobMessage;

use anyhow::Context;
use spindle_platform::capabilities::blobs::BlobStore;
use spindle_platform::capabilities::queue::{Broker, Handler};
use spindle_platform::manifest::{AmqpTarget, AmqpTrigger, Manifest};
use std::sync::Arc;

/// The name `[[trigger.amqp]] worker = "..."` uses for this worker.
pub const WORKER: &str = "convert";

/// The queues the worker publishes to (declared before it starts).
pub const PUBLISHES: &[&str] = &[MP3_QUEUE];

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

/// Checks ffmpeg and builds the handler for the worker's trigger.
pub async fn handler(
    blobs: BlobStore,
    broker: Broker,
    config: &ConvertConfig,
    trigger: &AmqpTrigger,
) -> anyhow::Result<Handler> {
    let (ffmpeg, version) = ffmpeg::Ffmpeg::check(&config.ffmpeg, config.time_limit()).await?;
    let work_dir = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating the convert work_dir {}", work_dir.display()))?;
    tracing::info!(
        queue = %trigger.queue,
        concurrency = trigger.concurrency,
        time_limit_secs = config.time_limit_secs,
        "convert worker ready: {version}"
    );
    let converter = Arc::new(job::Converter {
        blobs,
        broker,
        ffmpeg,
        work_dir,
        max_attempts: trigger.max_attempts,
    });
    Ok(Arc::new(move |delivery| {
        let converter = converter.clone();
        Box::pin(async move { converter.handle(delivery).await })
    }))
}
