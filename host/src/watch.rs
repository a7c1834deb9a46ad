//! `spindle up --watch`: rebuild a component when its `build.watch` files
//! change and swap it into the running host.
//!
//! As with `spin watch`, the files are each component's
//! `[component.NAME.build] watch = [globs...]`, relative to its `workdir`
//! (the manifest's folder when there is none); a leading `!` excludes. A
//! component without `build.watch` is not watched, and neither is its
//! `source` (the build's output, which a build rewrites every time).
//!
//! Unlike `spin watch`, which restarts the whole application, a rebuilt
//! component goes through the same hot redeploy as `spindle deploy`
//! ([`App::deploy`], recorded with action `watch`): it is compiled and
//! checked off the request path, refused (the running version keeps
//! serving) when it does not fit its grants or triggers, recorded in the
//! deploy store, swapped in without failing a request, and followed by the
//! other replicas. Only the components whose globs matched are rebuilt.
//!
//! The pieces:
//! - one `notify` watcher on the folders the globs start from (not the
//!   whole application folder: that holds `target/`, which every build
//!   churns), feeding changed paths to
//! - a dispatcher task that waits for [`DEBOUNCE`] of quiet (an editor's
//!   save or a `git checkout` is a burst of events), then hands each
//!   component the paths that match its globs, and
//! - one task per watched component that builds and deploys. Paths that
//!   arrive during a build are kept, and make exactly one more rebuild
//!   after it: the last change is always built, and a burst does not
//!   queue a build per event.
//!
//! `spin.toml` itself is watched too, but not applied: routes, triggers,
//! grants and variables are fixed when the host starts. An edit is checked
//! and logged with the sections it changed (or why it no longer loads), so
//! it is never silently ignored; a restart applies it.

use crate::builder;
use anyhow::{Context, Result};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecursiveMode, Watcher};
use spindle_platform::app::App;
use spindle_platform::deploy::Action;
use spindle_platform::manifest::Manifest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long the files must be quiet before a rebuild starts.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// How many changed files a rebuild's log line names before "and N more".
const NAMED_FILES: usize = 5;

/// Keeps the watch running; dropping it stops the watcher (the tasks end
/// when their channel closes).
pub struct Watching {
    _watcher: notify::RecommendedWatcher,
}

/// One watched component: its globs, and the changes waiting for its task.
struct Watched {
    id: String,
    /// The folder the globs are relative to (canonical, as event paths are).
    base: PathBuf,
    /// The globs as written, for the log.
    globs: String,
    include: GlobSet,
    exclude: GlobSet,
    pending: Arc<Mutex<BTreeSet<PathBuf>>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Watched {
    fn matches(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.base) else {
            return false;
        };
        self.include.is_match(relative) && !self.exclude.is_match(relative)
    }
}

/// The manifest the host started with, to tell edits apart, and what was
/// last said about the file (`None`: nothing yet, or that it did not load).
struct ManifestWatch {
    path: PathBuf,
    running: toml::Table,
    reported: Option<Vec<String>>,
}

/// Starts watching every component with `build.watch`, and the manifest.
/// Errors only when the watcher itself cannot start.
pub fn start(app: Arc<App>, manifest: &Manifest) -> Result<Watching> {
    let mut watched = Vec::new();
    let mut roots: BTreeMap<PathBuf, RecursiveMode> = BTreeMap::new();
    let manifest_path = manifest
        .path
        .canonicalize()
        .with_context(|| format!("watching {}", manifest.path.display()))?;
    let manifest_watch = ManifestWatch {
        running: read_table(&manifest_path).unwrap_or_default(),
        path: manifest_path.clone(),
        reported: Some(Vec::new()),
    };
    if let Some(folder) = manifest_path.parent() {
        roots.insert(folder.to_path_buf(), RecursiveMode::NonRecursive);
    }
    for (id, component) in &manifest.components {
        let Some(build) = &component.build else {
            continue;
        };
        if build.watch.is_empty() {
            continue;
        }
        let base = match builder::workdir(manifest, build).canonicalize() {
            Ok(base) => base,
            Err(e) => {
                tracing::warn!(
                    component = %id,
                    "not watched: its build folder {}: {e}",
                    builder::workdir(manifest, build).display()
                );
                continue;
            }
        };
        let (mut include, mut exclude) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for pattern in &build.watch {
            if let Some(excluded) = pattern.strip_prefix('!') {
                exclude.add(
                    glob(excluded).with_context(|| {
                        format!("component `{id}`: build.watch glob `{pattern}`")
                    })?,
                );
                continue;
            }
            include.add(
                glob(pattern)
                    .with_context(|| format!("component `{id}`: build.watch glob `{pattern}`"))?,
            );
            let (root, mode) = root_of(&base, pattern);
            if root.exists() {
                let entry = roots.entry(root).or_insert(mode);
                if mode == RecursiveMode::Recursive {
                    *entry = RecursiveMode::Recursive;
                }
            } else {
                tracing::warn!(
                    component = %id,
                    "build.watch `{pattern}`: {} does not exist, so it is not watched",
                    root.display()
                );
            }
        }
        watched.push(Watched {
            id: id.clone(),
            base,
            globs: build.watch.join(", "),
            include: include.build()?,
            exclude: exclude.build()?,
            pending: Arc::default(),
            wake: Arc::default(),
        });
    }
    if watched.is_empty() {
        tracing::warn!("--watch: no component has `build.watch` globs; only spin.toml is watched");
    }

    let (tx, rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if changes(&event.kind) => {
                let _ = tx.send(event.paths);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("--watch: watching files failed: {e}"),
        })
        .context("starting the file watcher")?;
    // A folder inside one watched recursively is already covered.
    let recursive: Vec<PathBuf> = roots
        .iter()
        .filter(|(_, m)| **m == RecursiveMode::Recursive)
        .map(|(p, _)| p.clone())
        .collect();
    for (root, mode) in &roots {
        if recursive.iter().any(|r| r != root && root.starts_with(r)) {
            continue;
        }
        watcher
            .watch(root, *mode)
            .with_context(|| format!("watching {}", root.display()))?;
    }

    for w in &watched {
        tracing::info!(
            component = %w.id,
            "--watch: rebuilding {} when {} change",
            w.id,
            w.globs
        );
        tokio::spawn(rebuild_loop(
            app.clone(),
            manifest.clone(),
            w.id.clone(),
            w.base.clone(),
            w.pending.clone(),
            w.wake.clone(),
        ));
    }
    tokio::spawn(dispatch(rx, watched, manifest_watch));
    Ok(Watching { _watcher: watcher })
}

/// `*` does not cross `/` (as in Spin's globs); `**` does.
fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// The folder a glob's matches live under (its part before the first
/// wildcard) and whether its subfolders matter. A plain file name is
/// watched through its folder, since editors save by replacing the file.
fn root_of(base: &Path, pattern: &str) -> (PathBuf, RecursiveMode) {
    let parts: Vec<&str> = Path::new(pattern)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            Component::ParentDir => Some(".."),
            _ => None,
        })
        .collect();
    let wild = |s: &str| s.contains(['*', '?', '[', '{']);
    let literal = parts.iter().take_while(|p| !wild(p)).count();
    let mut root = base.to_path_buf();
    if literal == parts.len() {
        // A single file: its folder, non-recursively.
        for part in &parts[..parts.len().saturating_sub(1)] {
            root.push(part);
        }
        return (root, RecursiveMode::NonRecursive);
    }
    for part in &parts[..literal] {
        root.push(part);
    }
    let rest = &parts[literal..];
    let mode = if rest.len() == 1 && !rest[0].contains("**") {
        RecursiveMode::NonRecursive
    } else {
        RecursiveMode::Recursive
    };
    (root, mode)
}

/// Events that change a file's contents or existence; reads (including
/// the build command reading its sources) are not changes.
fn changes(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Collects changed paths until [`DEBOUNCE`] passes without one, then
/// wakes the components whose globs match them.
async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    watched: Vec<Watched>,
    mut manifest: ManifestWatch,
) {
    while let Some(first) = rx.recv().await {
        let mut changed: BTreeSet<PathBuf> = first.into_iter().collect();
        while let Ok(Some(paths)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            changed.extend(paths);
        }
        if changed.contains(&manifest.path) {
            manifest.check();
        }
        for w in &watched {
            let hits: Vec<PathBuf> = changed.iter().filter(|p| w.matches(p)).cloned().collect();
            if hits.is_empty() {
                continue;
            }
            lock(&w.pending).extend(hits);
            // Stores a permit when the task is building: one more rebuild.
            w.wake.notify_one();
        }
    }
}

impl ManifestWatch {
    /// Logs how the manifest on disk now differs from the running one, and
    /// that a restart applies it; or why the edited file would not load.
    /// A save that changes nothing new is not logged again.
    fn check(&mut self) {
        if let Err(e) = Manifest::load(&self.path) {
            tracing::error!(
                "--watch: {} was edited and no longer loads: {e}; the running app keeps the \
                 manifest it started with",
                self.path.display()
            );
            self.reported = None;
            return;
        }
        let Some(now) = read_table(&self.path) else {
            return;
        };
        let changed = changed_sections(&self.running, &now);
        if self.reported.as_ref() == Some(&changed) {
            return;
        }
        if changed.is_empty() {
            tracing::info!(
                "--watch: {} matches the running app again",
                self.path.display()
            );
        } else {
            tracing::warn!(
                "--watch: {} changed ({}); the running app keeps the manifest it started with \
                 (routes, triggers, grants and variables are fixed at start-up): restart \
                 `spindle up` to apply it",
                self.path.display(),
                changed.join(", ")
            );
        }
        self.reported = Some(changed);
    }
}

/// The manifest as a TOML table, or `None` when it cannot be read.
fn read_table(path: &Path) -> Option<toml::Table> {
    std::fs::read_to_string(path).ok()?.parse().ok()
}

/// The sections that differ, named as in the file: `application`,
/// `variables`, `trigger.http`, `component.gateway`, ...
fn changed_sections(before: &toml::Table, after: &toml::Table) -> Vec<String> {
    let mut changed = Vec::new();
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        match (before.get(key), after.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b)))
                if key == "component" || key == "trigger" =>
            {
                for inner in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
                    if a.get(inner) != b.get(inner) {
                        changed.push(format!("{key}.{inner}"));
                    }
                }
            }
            (a, b) if a != b => changed.push(key.clone()),
            _ => {}
        }
    }
    changed
}

/// A poisoned lock only means another task panicked holding it; the set
/// of paths is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One component's rebuilds, one at a time.
async fn rebuild_loop(
    app: Arc<App>,
    manifest: Manifest,
    id: String,
    base: PathBuf,
    pending: Arc<Mutex<BTreeSet<PathBuf>>>,
    wake: Arc<tokio::sync::Notify>,
) {
    let manifest = Arc::new(manifest);
    loop {
        wake.notified().await;
        let changed = std::mem::take(&mut *lock(&pending));
        if changed.is_empty() {
            continue;
        }
        if app.is_draining() {
            return;
        }
        rebuild(&app, &manifest, &id, &describe(&base, &changed)).await;
    }
}

/// "src/a.rs, src/b.rs and 3 more", relative to the globs' folder.
fn describe(base: &Path, changed: &BTreeSet<PathBuf>) -> String {
    let mut names: Vec<String> = changed
        .iter()
        .take(NAMED_FILES)
        .map(|p| p.strip_prefix(base).unwrap_or(p).display().to_string())
        .collect();
    if changed.len() > NAMED_FILES {
        names.push(format!("{} more", changed.len() - NAMED_FILES));
    }
    names.join(", ")
}

/// Builds the component off the executor and deploys what it built; every
/// outcome is one log line, and a failure leaves the running version.
async fn rebuild(app: &Arc<App>, manifest: &Arc<Manifest>, id: &str, files: &str) {
    let started = Instant::now();
    let built = {
        let (manifest, id) = (manifest.clone(), id.to_string());
        tokio::task::spawn_blocking(move || builder::build_captured(&manifest, &id)).await
    };
    let build_time = started.elapsed();
    let source = match built {
        Ok(Ok(source)) => source,
        Ok(Err(e)) => {
            tracing::error!(
                component = %id,
                "watch: {files} changed; building {id} failed after {build_time:.1?}, the running version keeps serving: {e:#}"
            );
            return;
        }
        Err(e) => {
            tracing::error!(component = %id, "watch: building {id} did not finish: {e}");
            return;
        }
    };
    let wasm = match tokio::fs::read(&source).await {
        Ok(wasm) => wasm,
        Err(e) => {
            tracing::error!(
                component = %id,
                "watch: {files} changed; rebuilt {id} in {build_time:.1?} but cannot read {}: {e}",
                source.display()
            );
            return;
        }
    };
    match app
        .deploy(id, wasm, Action::Watch, &source.display().to_string())
        .await
    {
        Ok(report) if report.changed => tracing::info!(
            component = %id,
            version = %report.record.short(),
            "watch: {files} changed; rebuilt {id} in {build_time:.1?}, swapped in version {} (was {}) in {:.1?}",
            report.record.short(),
            report.previous.short(),
            report.total_time
        ),
        Ok(report) => tracing::info!(
            component = %id,
            version = %report.record.short(),
            "watch: {files} changed; rebuilt {id} in {build_time:.1?}, same bytes as the running version {}: nothing to swap",
            report.record.short()
        ),
        // "refused, the running version keeps serving: <why>" or a store failure.
        Err(e) => tracing::error!(
            component = %id,
            "watch: {files} changed; rebuilt {id} in {build_time:.1?}, not deployed: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_edits_are_named_by_section() {
        let before: toml::Table = r#"
            [application]
            name = "app"
            [[trigger.http]]
            route = "/a"
            component = "a"
            [[trigger.amqp]]
            queue = "q"
            component = "b"
            [component.a]
            source = "a.wasm"
            [component.b]
            source = "b.wasm"
        "#
        .parse()
        .unwrap();
        assert!(changed_sections(&before, &before).is_empty());

        let mut after = before.clone();
        after["trigger"]["http"][0]["route"] = "/b".into();
        after["component"]["b"]
            .as_table_mut()
            .unwrap()
            .insert("send_mail".into(), true.into());
        after.insert("variables".into(), toml::Table::new().into());
        assert_eq!(
            changed_sections(&before, &after),
            ["component.b", "trigger.http", "variables"]
        );

        let mut removed = before.clone();
        removed["component"].as_table_mut().unwrap().remove("a");
        assert_eq!(changed_sections(&before, &removed), ["component.a"]);
    }

    #[test]
    fn roots_are_the_globs_literal_folders() {
        let base = Path::new("/app");
        assert_eq!(
            root_of(base, "functions/gateway/src/**/*.rs"),
            (
                PathBuf::from("/app/functions/gateway/src"),
                RecursiveMode::Recursive
            )
        );
        assert_eq!(
            root_of(base, "functions/gateway/Cargo.toml"),
            (
                PathBuf::from("/app/functions/gateway"),
                RecursiveMode::NonRecursive
            )
        );
        assert_eq!(
            root_of(base, "src/*.rs"),
            (PathBuf::from("/app/src"), RecursiveMode::NonRecursive)
        );
        assert_eq!(
            root_of(base, "*/lib.rs"),
            (PathBuf::from("/app"), RecursiveMode::Recursive)
        );
    }

    #[test]
    fn star_stays_in_its_folder_and_double_star_does_not() {
        let set = |g: &str| {
            let mut b = GlobSetBuilder::new();
            b.add(glob(g).unwrap());
            b.build().unwrap()
        };
        assert!(set("src/*.rs").is_match("src/lib.rs"));
        assert!(!set("src/*.rs").is_match("src/a/lib.rs"));
        assert!(set("src/**/*.rs").is_match("src/lib.rs"));
        assert!(set("src/**/*.rs").is_match("src/a/b/lib.rs"));
        assert!(set("src/**").is_match("src/probe.wasm"));
    }
}
