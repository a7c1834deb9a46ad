//! `.env` beside the manifest: a source of application variables, as
//! `spin up` reads `.env` through its environment-variables provider.
//!
//! As in Spin, only `SPIN_VARIABLE_<NAME>` keys count, a real environment
//! variable of the same name wins over the file, and the file is parsed
//! with `dotenvy` (quotes, `export`, comments, `${VAR}` substitution).
//! Spin reads `.env` in the working directory; Spindle reads the one
//! beside the manifest, the same file when `spindle up` runs in the
//! application's folder, and the right one with `-f path/to/app`.

use crate::manifest::Manifest;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}; fix the line or remove the file")]
pub struct DotenvError {
    path: PathBuf,
    source: dotenvy::Error,
}

/// `NAME=VALUE` for each declared variable the `.env` file sets and
/// neither `flags` (`--variable`) nor the environment (`is_set`) does;
/// appended to the `--variable` flags they keep Spindle's precedence:
/// flag, environment, `.env`, runtime config, default.
pub fn variable_values(
    manifest: &Manifest,
    flags: &[String],
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<String>, DotenvError> {
    let path = manifest.base_dir().join(".env");
    let entries = match dotenvy::from_path_iter(&path) {
        Ok(entries) => entries,
        Err(e) if e.not_found() => return Ok(Vec::new()),
        Err(source) => return Err(DotenvError { path, source }),
    };
    let mut values = Vec::new();
    for entry in entries {
        let (key, value) = entry.map_err(|source| DotenvError {
            path: path.clone(),
            source,
        })?;
        let Some(upper) = key.strip_prefix("SPIN_VARIABLE_") else {
            continue;
        };
        let name = upper.to_ascii_lowercase();
        let flagged = flags
            .iter()
            .any(|f| f.split_once('=').is_some_and(|(k, _)| k == name));
        if manifest.variables.contains_key(&name) && !flagged && !is_set(&key) {
            tracing::debug!("variable `{name}` from {}", path.display());
            values.push(format!("{name}={value}"));
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_unset_spin_variables_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        std::fs::write(
            dir.path().join("spin.toml"),
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[variables]\na = { default = \"d\" }\nb = { default = \"d\" }\nc = { default = \"d\" }\nd = { required = true }\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "# a comment\nSPIN_VARIABLE_A=from-file\nexport SPIN_VARIABLE_B=\"quoted value\"\nSPIN_VARIABLE_C=file\nSPIN_VARIABLE_D=d=1\nSPIN_VARIABLE_UNDECLARED=x\nOTHER=y\n",
        )
        .unwrap();
        let m = Manifest::load(&dir.path().join("spin.toml")).unwrap();
        let values = variable_values(&m, &["c=flag".into()], |k| k == "SPIN_VARIABLE_B").unwrap();
        assert_eq!(values, ["a=from-file", "d=d=1"]);
    }

    #[test]
    fn no_file_is_no_values_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("spin.toml"),
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n",
        )
        .unwrap();
        let m = Manifest::load(&dir.path().join("spin.toml")).unwrap();
        assert!(variable_values(&m, &[], |_| false).unwrap().is_empty());
        std::fs::write(dir.path().join(".env"), "SPIN_VARIABLE_A=\"unclosed\n").unwrap();
        let e = variable_values(&m, &[], |_| false).unwrap_err().to_string();
        assert!(e.contains(".env"), "{e}");
    }
}
