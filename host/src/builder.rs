//! `spindle build`: runs components' `[component.NAME.build]` commands.

use anyhow::{Context, Result, bail};
use spindle_platform::manifest::Manifest;
use std::process::Command;

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
        let workdir = manifest
            .base_dir()
            .join(build.workdir.as_deref().unwrap_or(std::path::Path::new("")));
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
