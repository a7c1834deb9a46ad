//! `spindle up`: load the application, bind the listeners, print the
//! routes, serve until Ctrl-C, then drain.

use crate::cli::UpArgs;
use anyhow::{Context, Result, bail};
use spindle_platform::admin::AdminListener;
use spindle_platform::app::{App, AppConfig};
use spindle_platform::capabilities::Backends;
use spindle_platform::capabilities::capability::BackendEnv;
use spindle_platform::capabilities::variables::AppVariables;
use spindle_platform::invoke::body::MinRate;
use spindle_platform::listener::Hygiene;
use spindle_platform::manifest::AmqpTarget;
use spindle_platform::manifest::{Manifest, RoutePattern};
use spindle_platform::metrics::ConversionMetrics;
use spindle_platform::runtime::cache::CacheOutcome;
use spindle_platform::runtime_config::RuntimeConfig;
use std::collections::HashMap;
use tokio::net::TcpListener;

pub async fn run(mut args: UpArgs) -> Result<()> {
    let manifest = Manifest::load(&args.manifest)?;
    if args.build {
        let m = manifest.clone();
        tokio::task::spawn_blocking(move || crate::builder::build(&m, &[])).await??;
    }
    let mut manifest = Manifest::load(&args.manifest)?;
    for warning in &manifest.warnings {
        tracing::warn!("{}: {warning}", manifest.path.display());
    }
    manifest.add_environment(&args.env);
    spindle_platform::capabilities::registry::grants(&manifest)?;
    // `.env` beside the manifest feeds variables below the environment.
    let from_dotenv = spindle_platform::dotenv::variable_values(&manifest, &args.variables, |k| {
        std::env::var_os(k).is_some()
    })?;
    args.variables.extend(from_dotenv);
    tracing::info!(
        app = %manifest.application.name,
        version = manifest.application.version.as_deref().unwrap_or("-"),
        "loading {}",
        manifest.path.display()
    );
    let runtime_config = match &args.runtime_config_file {
        Some(path) => RuntimeConfig::load(path)?,
        None => RuntimeConfig::default(),
    };
    let hygiene = Hygiene::from_limits(&runtime_config.limits);
    let min_body_rate = MinRate::from_limits(&runtime_config.limits);
    let convert_config = convert::ConvertConfig::from_section(runtime_config.convert.as_ref())
        .context("the runtime config")?;
    for trigger in &manifest.amqp_triggers {
        if let AmqpTarget::Worker(name) = trigger.target()
            && name != convert::WORKER
        {
            bail!(
                "{}: [[trigger.amqp]] for queue `{}` names worker `{name}`, which spindle does not have; the built-in native worker is `{}`",
                args.manifest.display(),
                trigger.queue,
                convert::WORKER
            );
        }
    }
    // The convert worker runs here unless the runtime config says it runs
    // elsewhere (`[convert] in_process = false`).
    let convert_trigger = if convert_config.in_process {
        convert::trigger(&manifest, &convert_config)
    } else {
        None
    };
    // Every queue a trigger consumes or a component publishes to is
    // declared, and those the convert worker publishes to when it runs here.
    let extra_queues: Vec<&str> = convert_trigger
        .iter()
        .flat_map(|_| convert::PUBLISHES.iter().copied())
        .collect();
    let backends = Backends::build(&BackendEnv {
        manifest: &manifest,
        runtime_config: &runtime_config,
        state_dir: &args.state_dir,
        variable_flags: &args.variables,
        extra_queues: &extra_queues,
        key_value_flags: &args.key_values,
        sqlite_flags: &args.sqlite,
    })
    .await?;
    refuse_default_secrets(&args, &manifest, &backends.variables)?;
    let mut workers = HashMap::new();
    let conversions = ConversionMetrics::default();
    if let Some(trigger) = &convert_trigger {
        let settings = convert::app_settings(&backends.variables)?;
        let worker = convert::worker(
            backends.blobs.clone(),
            backends.queue.clone(),
            &convert_config,
            trigger,
            settings,
            conversions.clone(),
        )
        .await?;
        workers.insert(convert::WORKER.to_string(), worker);
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}; pick another --listen", args.listen))?;
    let listen_addr = listener.local_addr()?;
    let admin_tls = match (&args.admin_tls_cert, &args.admin_tls_key) {
        (Some(cert), Some(key)) => Some(spindle_platform::admin::tls::acceptor(cert, key)?),
        _ => None,
    };
    let admin = AdminListener::bind(
        args.admin_listen,
        std::env::var("SPINDLE_ADMIN_TOKEN").ok(),
        admin_tls,
        &args.state_dir,
    )
    .await?;
    let admin_url = format!("{}://{}", admin.scheme(), admin.local_addr()?);

    // The watch keeps its own copy: the build commands and globs.
    let watch_manifest = args.watch.then(|| manifest.clone());
    let config = AppConfig {
        manifest,
        runtime_config,
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(|| args.state_dir.join("cache")),
        listen_addr,
        backends,
        host_id: host_id(listen_addr),
    };
    let app = tokio::task::spawn_blocking(move || App::load(config)).await??;
    if !workers.is_empty() {
        app.metrics().register_conversions(&conversions);
    }

    for c in app.components() {
        let how = match c.cache {
            CacheOutcome::Hit => "from cache",
            CacheOutcome::Compiled => "compiled",
        };
        tracing::info!(
            component = %c.id,
            version = %c.digest.get(..12).unwrap_or(&c.digest),
            "{how} in {:.1?}",
            c.load_time
        );
    }
    for (capability, backend) in app.backends().describe() {
        tracing::info!("{capability}: {backend}");
    }
    let consumers = app.start_queue_triggers(&workers).await?;
    // Hot-redeployed versions replace the manifest's before anything is
    // served (the blob store may answer only later; until then app routes
    // answer 503), then deploys made through other hosts follow; the task
    // ends with the process.
    let _deploys = app
        .start_deploys()
        .await
        .context("subscribing to deploy events")?;
    // Rebuilds and swaps watched components; stops with the process.
    let _watching = match watch_manifest {
        Some(manifest) => Some(crate::watch::start(app.clone(), &manifest)?),
        None => None,
    };
    print_routes(&app, listen_addr, &admin_url);

    let drain = std::time::Duration::from_secs(args.drain_timeout_secs);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = {
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.changed().await;
            };
            spindle_platform::admin::serve(admin, app, hygiene, min_body_rate, stopped, drain).await
        })
    };
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let shutdown = {
        let app = app.clone();
        async move {
            let signal = spindle_platform::signals::shutdown_signal().await;
            tracing::info!(
                "{signal}: draining (not ready, no new connections or messages, up to {}s for in-flight work)",
                drain.as_secs()
            );
            app.begin_drain();
            let _ = signalled_tx.send(true);
        }
    };
    // Consumers stop taking messages as soon as the signal comes, while
    // HTTP requests drain; running invocations get the same deadline, and
    // unacked or unstarted messages return to their queues.
    let consumers_stopped = tokio::spawn(async move {
        let _ = signalled.wait_for(|s| *s).await;
        stop_consumers(consumers, drain).await
    });
    spindle_platform::trigger::http::serve(listener, hygiene, app.http().clone(), shutdown, drain)
        .await;
    match consumers_stopped.await {
        Ok(0) => {}
        Ok(late) => tracing::warn!(
            "{late} consumer(s) did not finish in time; their messages return to the queue"
        ),
        Err(e) => tracing::error!("stopping the consumers failed: {e}"),
    }
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    app.backends().mysql.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// On a `--listen` address beyond loopback, refuses to start while a
/// `secret` variable sits on its manifest default (such as a development
/// `jwt_secret`): checked before anything is served.
fn refuse_default_secrets(
    args: &UpArgs,
    manifest: &Manifest,
    variables: &AppVariables,
) -> Result<()> {
    if args.listen.ip().is_loopback() {
        return Ok(());
    }
    let Some(first) = variables.secrets_on_default().first() else {
        return Ok(());
    };
    let names = variables
        .secrets_on_default()
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    bail!(
        "refusing to serve on {} (beyond loopback) while secret variable(s) {names} keep their default from {}; set each one, e.g. SPIN_VARIABLE_{}=... in the environment, --variable {first}=..., or [variables] in the runtime config (or listen on 127.0.0.1 for local use)",
        args.listen,
        manifest.path.display(),
        first.to_uppercase(),
    )
}

/// Stops every consumer at once, letting running handlers finish for up
/// to `drain`; returns how many were still busy then (their handlers are
/// dropped when the process exits, and their messages are redelivered).
async fn stop_consumers(
    consumers: Vec<spindle_platform::capabilities::queue::Consumer>,
    drain: std::time::Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + drain;
    let stops = consumers.into_iter().map(|consumer| async move {
        tokio::time::timeout_at(deadline, consumer.stop())
            .await
            .is_err()
    });
    futures::future::join_all(stops)
        .await
        .into_iter()
        .filter(|late| *late)
        .count()
}

/// Names this host in deploy records: the host name (the pod name on
/// Kubernetes) and the HTTP address.
fn host_id(listen: std::net::SocketAddr) -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{name}@{listen}")
}

fn print_routes(app: &App, listen: std::net::SocketAddr, admin: &str) {
    println!("Serving http://{listen}");
    println!("Available Routes:");
    let components = &app.manifest().components;
    for route in app.http().router().routes() {
        let RoutePattern::Path {
            based, wildcard, ..
        } = &route.route
        else {
            continue;
        };
        let shown = based.strip_suffix("/...").unwrap_or(based);
        let shown = if shown.is_empty() { "/" } else { shown };
        let suffix = if *wildcard { " (wildcard)" } else { "" };
        let name = route.component().unwrap_or(&route.trigger_id);
        println!("  {name}: http://{listen}{shown}{suffix}");
        if let Some(description) = route
            .component()
            .and_then(|id| components.get(id))
            .and_then(|c| c.description.as_deref())
        {
            println!("    {description}");
        }
    }
    println!("Admin {admin} (/healthz, /readyz, /metrics, /components)");
}
