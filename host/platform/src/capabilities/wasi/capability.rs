//! The component's WASI environment and files as a capability: its grant
//! keys are `environment`, `files` and `exclude_files`; the backend is the
//! staged copy of every component's files; an instance's state is what
//! [`super::WasiState::configure`] puts in its WASI context.

use super::{FileMount, WasiGrant, WasiState, check_mount, stage};
use crate::capabilities::capability::{
    BackendEnv, Capability, GrantEntry, GrantError, HasState, grants_of,
};
use anyhow::Context;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::Linker;

/// The marker for the WASI environment and files.
pub struct Wasi;

/// The staged files of every component that has some.
#[derive(Clone, Default)]
pub struct StagedFiles {
    by_component: Arc<HashMap<String, Arc<Path>>>,
    copied: usize,
    /// Removed when the process's backends are dropped.
    root: Option<Arc<tempfile::TempDir>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawMount {
    Pattern(String),
    Placement(Placement),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Placement {
    source: String,
    destination: String,
}

impl Capability for Wasi {
    const NAME: &'static str = "wasi:filesystem";
    const GRANT_KEYS: &'static [&'static str] = &["environment", "files", "exclude_files"];

    type Grant = WasiGrant;
    type Backend = StagedFiles;
    type State = WasiState;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        let environment: BTreeMap<String, String> = entry.get("environment")?;
        if let Some(bad) = environment
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            return Err(GrantError::new(
                format!("environment.{bad}"),
                format!("`{bad}` is not an environment variable name"),
                "use a name without `=`",
            ));
        }
        let raw: Vec<toml::Value> = entry.get("files")?;
        let app = entry.manifest.base_dir();
        let mut files = Vec::new();
        for (i, value) in raw.into_iter().enumerate() {
            let key = format!("files[{i}]");
            let mount = match value.try_into() {
                Ok(RawMount::Pattern(p)) => FileMount::Pattern(p),
                Ok(RawMount::Placement(Placement {
                    source,
                    destination,
                })) => FileMount::Placement {
                    source,
                    destination,
                },
                Err(_) => {
                    return Err(GrantError::new(
                        key,
                        "neither a path or glob nor a { source, destination } table",
                        "write \"assets/*.png\" or { source = \"assets\", destination = \"/\" }",
                    ));
                }
            };
            check_mount(app, &mount).map_err(|p| {
                GrantError::new(
                    &key,
                    p,
                    "files are relative to the manifest's folder (see Spin's `files`)",
                )
            })?;
            files.push(mount);
        }
        let exclude_files: Vec<String> = entry.get("exclude_files")?;
        for (i, pattern) in exclude_files.iter().enumerate() {
            glob::Pattern::new(pattern).map_err(|e| {
                GrantError::new(
                    format!("exclude_files[{i}]"),
                    format!("`{pattern}` is not a valid glob: {e}"),
                    "write a glob such as \"secrets/*\"",
                )
            })?;
        }
        Ok(WasiGrant {
            environment: environment.into_iter().collect(),
            files,
            exclude_files,
        })
    }

    async fn backend(env: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        let manifest = env.manifest;
        let grants: Vec<_> = grants_of::<Self>(manifest)?
            .into_iter()
            .filter(|(_, grant)| !grant.files.is_empty())
            .map(|(id, grant)| (id.to_string(), grant))
            .collect();
        if grants.is_empty() {
            return Ok(StagedFiles::default());
        }
        let parent = env.state_dir.join("files");
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let root = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a folder for the components' files in {}", parent.display()))?;
        let app = manifest.base_dir().to_path_buf();
        let root_path = root.path().to_path_buf();
        // Copying is blocking file work; keep it off the executor.
        let (by_component, copied) = tokio::task::spawn_blocking(move || {
            let mut by_component = HashMap::new();
            let mut copied = 0;
            for (id, grant) in grants {
                let dest = root_path.join(&id);
                copied += stage(&app, &grant.files, &grant.exclude_files, &dest)
                    .with_context(|| format!("component `{id}`: staging its `files`"))?;
                by_component.insert(id, Arc::from(dest.as_path()));
            }
            anyhow::Ok((by_component, copied))
        })
        .await??;
        Ok(StagedFiles {
            by_component: Arc::new(by_component),
            copied,
            root: Some(Arc::new(root)),
        })
    }

    fn describe(backend: &Self::Backend) -> Option<String> {
        let root = backend.root.as_ref()?;
        Some(format!(
            "{} file(s) of {} component(s) staged read-only in {}",
            backend.copied,
            backend.by_component.len(),
            root.path().display()
        ))
    }

    async fn ready(_: &Self::Backend) -> anyhow::Result<()> {
        Ok(())
    }

    /// WASI itself is in every instance's base world (the runtime links
    /// it); this capability only fills in each instance's context.
    fn add_to_linker<T: HasState<Self>>(_: &mut Linker<T>) -> wasmtime::Result<()> {
        Ok(())
    }

    fn prepare(backend: &Self::Backend, grant: &Self::Grant, id: &str) -> Self::State {
        WasiState {
            environment: grant.environment.clone(),
            files: backend.by_component.get(id).cloned(),
        }
    }

    fn is_granted(_: &Self::Grant) -> bool {
        false
    }

    fn missing_grant(_: &str, _: &Self::Grant) -> Option<&'static str> {
        None
    }
}
