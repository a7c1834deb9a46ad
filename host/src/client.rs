//! `spindle deploy`, `spindle rollback`, `spindle status` and
//! `spindle dead-letters`: clients of a
//! running host's admin API (see `spindle_platform::admin`). The token comes
//! from `SPINDLE_ADMIN_TOKEN`, or else from `<state-dir>/admin-token`, which
//! `spindle up` generates when that variable is unset.

use crate::cli::{AdminArgs, DeadLettersArgs, DeployArgs, RollbackArgs};
use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use spindle_platform::admin::token;
use spindle_platform::api::{
    ComponentStatus, DeadLetterView, DeployReportView, ErrorBody, History, ReplayReport,
};
use spindle_platform::manifest::Manifest;
use std::path::Path;

fn request(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
) -> Result<reqwest::RequestBuilder> {
    let url = format!("{}{path}", admin.admin.trim_end_matches('/'));
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &admin.admin_ca_cert {
        let pem = std::fs::read(ca)
            .with_context(|| format!("reading the admin CA certificate {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
        client = client.add_root_certificate(cert);
    }
    let client = client.build().context("setting up the HTTP client")?;
    let mut req = client.request(method, url);
    if let Some(token) = token(admin)? {
        req = req.bearer_auth(token);
    }
    Ok(req)
}

/// `SPINDLE_ADMIN_TOKEN`, or else the token `spindle up` generated into its
/// state directory; `None` when there is neither (the request goes out
/// without one, so an unreachable host is reported as that, and a 401 then
/// names the missing file).
fn token(admin: &AdminArgs) -> Result<Option<String>> {
    if let Ok(token) = std::env::var("SPINDLE_ADMIN_TOKEN")
        && !token.is_empty()
    {
        return Ok(Some(token));
    }
    Ok(token::read(&token::path(&admin.state_dir))?)
}

/// Sends `req`; returns the body of a success as `T`, or an error carrying
/// the host's message.
async fn send<T: DeserializeOwned>(admin: &AdminArgs, req: reqwest::RequestBuilder) -> Result<T> {
    let resp = req.send().await.map_err(|e| {
        let cause = causes(&e);
        if cause.contains("certificate") {
            anyhow::anyhow!(
                "the admin API at {} did not present a certificate this client trusts ({cause}); pass its CA with --admin-ca-cert PEM",
                admin.admin
            )
        } else if e.is_connect() {
            anyhow::anyhow!(
                "cannot reach the admin API at {} ({cause}): is `spindle up` running? If it listens elsewhere, pass --admin http://HOST:PORT (its --admin-listen; https when it has --admin-tls-cert)",
                admin.admin
            )
        } else {
            anyhow::anyhow!("talking to the admin API at {}: {cause}", admin.admin)
        }
    })?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .context("reading the admin API's answer")?;
    if status.is_success() {
        return serde_json::from_str(&body)
            .with_context(|| format!("reading the admin API's answer ({status}): {body}"));
    }
    // Anything that is not the API's own error shape is shown as it came.
    let message = match serde_json::from_str::<ErrorBody>(&body) {
        Ok(ErrorBody { error }) => error,
        Err(_) => body,
    };
    if status == reqwest::StatusCode::UNAUTHORIZED {
        if token(admin).ok().flatten().is_none() {
            bail!(
                "no admin token: SPINDLE_ADMIN_TOKEN is not set and {} does not exist; run this where `spindle up` runs, pass its --state-dir, or set SPINDLE_ADMIN_TOKEN to the token the host was started with",
                token::path(&admin.state_dir).display()
            );
        }
        bail!(
            "{message} (set SPINDLE_ADMIN_TOKEN to the host's token, or pass the --state-dir of a host that generated its own)"
        );
    }
    bail!("{message} ({status})")
}

/// The error and its sources on one line: reqwest's own message alone
/// says "error sending request", not why.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(inner) = source {
        parts.push(inner.to_string());
        source = inner.source();
    }
    parts.join(": ")
}

fn print_report(verb: &str, report: &DeployReportView) {
    let component = &report.component;
    let version = &report.version.version;
    let previous = &report.previous.version;
    if !report.changed {
        println!("{component} already runs {version}; nothing changed");
        return;
    }
    println!(
        "{verb} {component}: {version} (was {previous}) in {} ms, of which compiling and linking {} ms",
        report.total_ms, report.compile_ms
    );
}

pub async fn deploy(args: DeployArgs) -> Result<()> {
    let wasm_path = match &args.wasm {
        Some(path) => path.clone(),
        None => {
            let manifest = Manifest::load(&args.manifest)?;
            let Some(component) = manifest.components.get(&args.component) else {
                bail!(
                    "{}: no component `{}`; components are: {}",
                    args.manifest.display(),
                    args.component,
                    manifest
                        .components
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            manifest.source_path(component)
        }
    };
    let wasm = std::fs::read(&wasm_path).with_context(|| {
        format!(
            "cannot read {}; build it first (spindle build {})",
            wasm_path.display(),
            args.component
        )
    })?;
    let source = std::path::absolute(&wasm_path).unwrap_or(wasm_path);
    let req = request(
        &args.admin,
        reqwest::Method::PUT,
        &format!("/components/{}", args.component),
    )?
    .header(
        spindle_platform::admin::SOURCE_HEADER,
        source_header(&source),
    )
    .body(wasm);
    let report: DeployReportView = send(&args.admin, req).await?;
    print_report("Deployed", &report);
    Ok(())
}

/// The path as a header value (non-ASCII characters replaced).
fn source_header(path: &Path) -> String {
    path.display()
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

pub async fn rollback(args: RollbackArgs) -> Result<()> {
    let req = request(
        &args.admin,
        reqwest::Method::POST,
        &format!("/components/{}/rollback", args.component),
    )?;
    let report: DeployReportView = send(&args.admin, req).await?;
    print_report("Rolled back", &report);
    Ok(())
}

pub async fn status(admin: AdminArgs, json: bool) -> Result<()> {
    let rows: Vec<ComponentStatus> = send(
        &admin,
        request(&admin, reqwest::Method::GET, "/components")?,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = rows
        .iter()
        .map(|c| c.component.len())
        .max()
        .unwrap_or(9)
        .max(9);
    println!(
        "{:width$}  {:12}  {:24}  {:8}  {:6}  TRIGGERS",
        "COMPONENT", "VERSION", "DEPLOYED", "HOW", "HISTORY"
    );
    for c in &rows {
        let current = &c.current;
        let mut triggers = c.routes.clone();
        triggers.extend(c.queues.iter().map(|q| format!("queue {q}")));
        let history = match &c.history {
            History::Versions(versions) => versions.len(),
            History::Unreadable(_) => 1,
        };
        println!(
            "{:width$}  {:12}  {:24}  {:8}  {:6}  {}",
            c.component,
            current.version,
            current.deployed_at,
            current.action.as_str(),
            history,
            if triggers.is_empty() {
                "-".to_string()
            } else {
                triggers.join(", ")
            },
        );
        println!("{:width$}  from {} by {}", "", current.source, current.host);
    }
    Ok(())
}

pub async fn dead_letters(args: DeadLettersArgs) -> Result<()> {
    let queue = &args.queue;
    let (method, path) = if args.replay {
        (
            reqwest::Method::POST,
            format!("/queues/{queue}/dead-letters/replay?limit={}", args.limit),
        )
    } else {
        (
            reqwest::Method::GET,
            format!("/queues/{queue}/dead-letters?limit={}", args.limit),
        )
    };
    let req = request(&args.admin, method, &path)?;
    if args.replay {
        let report: ReplayReport = send(&args.admin, req).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "Replayed {} dead letter(s) of `{}` onto the queue, attempts reset",
                report.replayed, report.queue
            );
        }
        return Ok(());
    }
    let letters: Vec<DeadLetterView> = send(&args.admin, req).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(());
    }
    if letters.is_empty() {
        println!("No dead letters in `{queue}`");
        return Ok(());
    }
    let now_ms = spindle_platform::clock::now_ms();
    println!("{:36}  {:7}  {:9}  REASON", "MESSAGE-ID", "ATTEMPT", "AGE");
    for letter in &letters {
        let age = letter.dead_at_ms.map_or("?".to_string(), |at| {
            format!("{}s", now_ms.saturating_sub(at) / 1000)
        });
        println!(
            "{:36}  {:7}  {:9}  {}",
            letter.message_id, letter.attempt, age, letter.reason
        );
        println!(
            "{:36}  body: {}",
            "",
            letter.body.chars().take(200).collect::<String>()
        );
    }
    println!(
        "{} dead letter(s); `spindle dead-letters {queue} --replay` puts them back",
        letters.len()
    );
    Ok(())
}
