//! `spindle-convert`: the convert worker on its own, for running it apart
//! from the HTTP hosts (e.g. a Kubernetes Deployment with ffmpeg in its
//! image). It reads the same `spin.toml` and runtime config as `spindle up`.
//!
//! With `--health-listen ADDR` it serves `/healthz` (alive), `/readyz` (the
//! blob store and the broker answer; ffmpeg was found at start-up, or the
//! worker would have exited) and `/metrics` (its queue consumer's counts)
//! for Kubernetes probes and Prometheus, with no token and nothing else.

use anyhow::{Context, Result};
use clap::Parser;
use spindle_platform::admin::probes::{self, Probed};
use spindle_platform::capabilities::blobs::Blobs;
use spindle_platform::capabilities::capability::BackendEnv;
use spindle_platform::capabilities::queue::component::Publisher;
use spindle_platform::capabilities::{Backends, Capability};
use spindle_platform::lifecycle::Readiness;
use spindle_platform::listener::Hygiene;
use spindle_platform::manifest::Manifest;
use spindle_platform::metrics::{ConversionMetrics, Metrics};
use spindle_platform::runtime_config::RuntimeConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "spindle-convert",
    version,
    about = "Convert queued videos to MP3 with ffmpeg"
)]
struct Args {
    /// The application manifest (for the `worker = "convert"` trigger).
    #[arg(long, short = 'f', default_value = "spin.toml")]
    manifest: PathBuf,
    /// Runtime config (TOML): backends and the [convert] section.
    #[arg(long)]
    runtime_config_file: Option<PathBuf>,
    /// Where embedded backends keep their data (when no servers are configured).
    #[arg(long, default_value = ".spindle")]
    state_dir: PathBuf,
    /// Serve /healthz, /readyz and /metrics on this address (e.g.
    /// 0.0.0.0:8081 for Kubernetes probes); none when not given.
    #[arg(long)]
    health_listen: Option<SocketAddr>,
}

/// What the health listener reports on: the backends the worker needs to
/// convert anything, and the counts of its consumer.
struct Health {
    backends: Backends,
    metrics: Metrics,
}

/// The capabilities the worker converts with; both decide readiness.
const NEEDS: &[&str] = &[Blobs::NAME, Publisher::NAME];

impl Probed for Health {
    async fn readiness(&self) -> Readiness {
        Readiness::from_checks(self.backends.check(NEEDS).await, NEEDS)
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

fn main() -> std::process::ExitCode {
    spindle_platform::logging::init();
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let manifest = Manifest::load(&args.manifest)?;
    let runtime_config = match &args.runtime_config_file {
        Some(path) => RuntimeConfig::load(path)?,
        None => RuntimeConfig::default(),
    };
    let config = convert::ConvertConfig::from_section(runtime_config.convert.as_ref())
        .with_context(|| {
            format!(
                "{}",
                args.runtime_config_file
                    .as_deref()
                    .unwrap_or("runtime config".as_ref())
                    .display()
            )
        })?;
    // Bound first, so a taken address stops the worker before anything else.
    let health_socket = match args.health_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} for the health endpoints; pick another --health-listen"
            )
        })?),
        None => None,
    };
    let trigger = convert::trigger(&manifest, &config).with_context(|| {
        format!(
            "{} has no [[trigger.amqp]] with worker = \"{}\"; add one naming the queue to convert",
            args.manifest.display(),
            convert::WORKER
        )
    })?;
    let backends = Backends::build(&BackendEnv {
        manifest: &manifest,
        runtime_config: &runtime_config,
        state_dir: &args.state_dir,
        variable_flags: &[],
        extra_queues: convert::PUBLISHES,
        key_value_flags: &[],
        sqlite_flags: &[],
    })
    .await?;
    let (blobs, broker) = (backends.blobs.clone(), backends.queue.clone());
    tracing::info!("spindle:blobs: {}", blobs.describe());
    tracing::info!("spindle:queue: {}", broker.describe());
    let settings = convert::app_settings(&backends.variables)?;
    let conversions = ConversionMetrics::default();
    let worker = convert::worker(
        blobs.clone(),
        broker.clone(),
        &config,
        &trigger,
        settings,
        conversions.clone(),
    )
    .await?;
    let metrics = Metrics::new(blobs.metrics());
    metrics.register_conversions(&conversions);
    let mut options = spindle_platform::trigger::amqp::consume_options(&trigger);
    options.on_dead_letter = worker.on_dead_letter;
    // The queue's series exist (at 0) from here, before any message.
    options.metrics = Some(metrics.queue(&trigger.queue));
    let health = Arc::new(Health { backends, metrics });
    if let Some(socket) = health_socket {
        println!(
            "Health http://{} (/healthz, /readyz, /metrics)",
            socket.local_addr()?
        );
        let hygiene = Hygiene::from_limits(&runtime_config.limits);
        // Served until the process exits.
        tokio::spawn(probes::serve(
            socket,
            health,
            hygiene,
            std::future::pending(),
        ));
    }
    let consumer = broker
        .consume(&trigger.queue, options, worker.handler)
        .await
        .with_context(|| format!("consuming `{}`", trigger.queue))?;
    println!("Converting videos from queue `{}`", trigger.queue);
    let signal = spindle_platform::signals::shutdown_signal().await;
    // Conversions can take minutes: stop them (ffmpeg is killed with its
    // handler) and let their messages return to the queue for another worker.
    tracing::info!("{signal}: stopping; unfinished conversions go back to the queue");
    consumer.abort().await;
    Ok(())
}
