//! The compile cache: native code for each component, kept on disk under a
//! key made of the component's sha256 and the engine's compatibility hash,
//! so a second start (or a second host on the same disk) skips Cranelift.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Whether a component came from the cache or was compiled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Compiled,
}

pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    pub fn new(engine: &Engine, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the compile cache {}", dir.display()))?;
        // The compatibility hash covers wasmtime's version and every codegen
        // setting, so artifacts from another engine config are never reused.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// The sha256 of a component's bytes, in hex: its version identity.
    pub fn digest(wasm: &[u8]) -> String {
        hex::encode(Sha256::digest(wasm))
    }

    /// Returns the compiled component for `wasm`, from disk when possible.
    /// The bytes are normalized first (a core module componentized, see
    /// [`super::componentize`]); the entry is keyed by the bytes as
    /// deployed, so a hit skips that as well as Cranelift.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> Result<(Component, CacheOutcome)> {
        let path = self
            .dir
            .join(format!("{}-{}.cwasm", Self::digest(wasm), self.engine_key));
        if path.is_file() {
            // SAFETY: files in this directory are written only by `store`
            // below from `Component::serialize` of an engine with the same
            // compatibility hash (part of the file name). A damaged file
            // fails the header checks and is recompiled.
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize_file(engine, &path) };
            match loaded {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "discarding unreadable cache entry: {e:#}")
                }
            }
        }
        let component = Component::new(engine, super::componentize::normalize(wasm)?)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), "could not write the compile cache: {e:#}");
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, component: &Component) -> Result<()> {
        let bytes = component.serialize()?;
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::fs::write(tmp.path(), bytes)?;
        tmp.persist(path)?;
        Ok(())
    }
}
