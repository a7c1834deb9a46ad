//! `spindle build`: runs components' `[component.NAME.build]` commands.

use anyhow::{Context, Result, bail};
use spindle_platform::manifest::{BuildConfig, Manifest};
use std::path::PathBuf;
use std::process::Command;

/// The folder a component's build command runs in, and that its
/// `build.watch` globs are relative to: `workdir` under the manifest's
/// folder, or that folder.
pub fn workdir(manifest: &Manifest, build: &BuildConfig) -> PathBuf {
    let dir = manifest
        .base_dir()
        .join(build.workdir.as_deref().unwrap_or(std::path::Path::new("")));
    // `spin.toml` has the folder "", which cannot be canonicalized.
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    }
}

/// How many of a failed build's last output lines go into its error: the
/// compiler's message without a whole log.
const FAILED_OUTPUT_LINES: usize = 60;

/// Runs one component's build command with its output captured, for
/// `spindle up --watch`: there a failed build is logged (with the tail of
/// what the command printed) and the running version keeps serving, so
/// the output must not interleave with the host's log. Returns the
/// component's `source`, which the build must have produced.
pub fn build_captured(manifest: &Manifest, id: &str) -> Result<PathBuf> {
    let component = manifest
        .components
        .get(id)
        .with_context(|| format!("no component `{id}`"))?;
    let build = component
        .build
        .as_ref()
        .with_context(|| format!("component `{id}` has no build command"))?;
    let output = Command::new("sh")
        .arg("-c")
        .arg(&build.command)
        .current_dir(workdir(manifest, build))
        .output()
        .with_context(|| format!("component `{id}`: cannot run its build command"))?;
    if !output.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(FAILED_OUTPUT_LINES)..].join("\n");
        bail!(
            "component `{id}`: build command `{}` failed ({}):\n{tail}",
            build.command,
            output.status
        );
    }
    let source = manifest.source_path(component);
    if !source.is_file() {
        bail!(
            "component `{id}`: the build finished but {} does not exist; fix `source` or the build command",
            source.display()
        );
    }
    Ok(source)
}

/// Builds the named components (all with a build command when `only` is
/// empty), stopping at the first failure.
pub fn build(manifest: &Manifest, only: &[String]) -> Result<()> {
    for name in only {
        if !manifest.components.contains_key(name) {
            bail!(
                "{}: no component `{name}`; components are: {}",
                manifest.path.display(),
                manifest
                    .components
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    for (id, component) in &manifest.components {
        if !only.is_empty() && !only.contains(id) {
            continue;
        }
        let Some(build) = &component.build else {
            if !only.is_empty() {
                println!("Component {id} has no build command; nothing to do");
            }
            continue;
        };
        let workdir = workdir(manifest, build);
        println!("Building component {id} with `{}`", build.command);
        let status = Command::new("sh")
            .arg("-c")
            .arg(&build.command)
            .current_dir(&workdir)
            .status()
            .with_context(|| format!("component `{id}`: cannot run its build command"))?;
        if !status.success() {
            bail!(
                "component `{id}`: build command `{}` failed ({status})",
                build.command
            );
        }
        let source = manifest.source_path(component);
        if !source.is_file() {
            bail!(
                "component `{id}`: the build finished but {} does not exist; fix `source` or the build command",
                source.display()
            );
        }
    }
    println!("Finished building all Spindle components");
    Ok(())
}
