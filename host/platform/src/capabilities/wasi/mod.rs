//! What Spin gives every component through plain WASI: its `environment`
//! variables and its `files`, mounted read-only.
//!
//! Files are staged as `spin up` stages a local application by default
//! (its loader's copy strategy, not `--direct-mounts`): at start-up every
//! file a component's `files` select, less its `exclude_files`, is copied
//! into a folder of its own under `<state-dir>/files/`, and that folder is
//! the guest's `/`, read-only. One folder per component keeps the
//! per-instance cost to one preopen; the copy also means a file edited
//! while the host runs is not seen until a restart, as in Spin.
//!
//! Where Spindle differs from Spin's loader, on purpose:
//! - a pattern naming a directory (`files = ["static"]`) mounts its files
//!   at `/static/...`; Spin's loader joins the directory twice
//!   (`/static/static/...`), which no application can mean;
//! - a pattern or destination with a `..` component is refused: it would
//!   place files outside the component's folder (a placement's `source`
//!   may still come from outside the application folder, as in Spin).

mod capability;

pub use capability::Wasi;

use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::Arc;

/// One `files` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMount {
    /// A file, a directory or a glob, relative to the manifest's folder;
    /// files keep their relative path in the guest.
    Pattern(String),
    /// `{ source = "dir-or-file", destination = "/guest/path" }`.
    Placement { source: String, destination: String },
}

/// What one component's entry grants.
#[derive(Debug, Clone, Default)]
pub struct WasiGrant {
    pub environment: Arc<[(String, String)]>,
    pub files: Vec<FileMount>,
    pub exclude_files: Vec<String>,
}

/// What every instance of a component starts from.
#[derive(Clone, Default)]
pub struct WasiState {
    environment: Arc<[(String, String)]>,
    /// The component's staged files, preopened at `/`.
    files: Option<Arc<Path>>,
}

impl WasiState {
    /// Adds the component's environment and its files (read-only, at `/`)
    /// to an instance's WASI context.
    pub fn configure(&self, builder: &mut wasmtime_wasi::WasiCtxBuilder) -> anyhow::Result<()> {
        builder.envs(&self.environment);
        if let Some(dir) = &self.files {
            builder
                .preopened_dir(dir, "/", wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "opening the component's files at {}: {e}",
                        dir.display()
                    )
                })?;
        }
        Ok(())
    }
}

/// Why staging a component's files failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{0}")]
    Invalid(String),
    #[error("copying {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether `s` has glob syntax (Spin's test: escaping changes it).
fn looks_like_glob(s: &str) -> bool {
    glob::Pattern::escape(s) != s
}

fn has_parent_part(path: &str) -> bool {
    Path::new(path)
        .components()
        .any(|c| matches!(c, PathPart::ParentDir))
}

/// Checks one `files` entry against the application folder `app`, as
/// Spin's loader does before copying.
pub fn check_mount(app: &Path, mount: &FileMount) -> Result<(), String> {
    match mount {
        FileMount::Pattern(p) => {
            if p == ".." || p.ends_with("/..") || p == "." || p.ends_with("/.") {
                return Err(format!(
                    "`{p}` ends in `.` or `..`; to include a directory use {{ source = \"dir\", destination = \"/\" }} or a glob ending in **/*"
                ));
            }
            if has_parent_part(p) {
                return Err(format!(
                    "`{p}` leaves the application folder; use {{ source = \"{p}\", destination = \"/...\" }} to place files from outside it"
                ));
            }
            if Path::new(p).is_absolute() {
                return Err(format!("`{p}` is absolute; patterns are relative to the manifest's folder"));
            }
            if app.join(p).exists() {
                return Ok(());
            }
            if !looks_like_glob(p) {
                return Err(format!("`{p}` does not exist and is not a glob pattern"));
            }
            glob::Pattern::new(p)
                .map(drop)
                .map_err(|e| format!("`{p}` is not a valid glob: {e}"))
        }
        FileMount::Placement {
            source,
            destination,
        } => {
            let path = app.join(source);
            let meta = std::fs::metadata(&path)
                .map_err(|_| format!("file or directory `{source}` does not exist"))?;
            if has_parent_part(destination) {
                return Err(format!(
                    "destination `{destination}` has a `..` part; give a path inside the guest's /"
                ));
            }
            let dir_like = destination.ends_with('/') || destination.ends_with('.');
            if meta.is_file() && dir_like {
                return Err(format!(
                    "`{destination}` is not a valid destination file name for the file `{source}`"
                ));
            }
            Ok(())
        }
    }
}

/// Copies every file `mounts` select, less `exclude`, from the
/// application folder `app` into `dest` (the guest's `/`). Returns how
/// many files were copied.
pub fn stage(
    app: &Path,
    mounts: &[FileMount],
    exclude: &[String],
    dest: &Path,
) -> Result<usize, FilesError> {
    let exclude: Vec<glob::Pattern> = exclude
        .iter()
        .map(|p| {
            glob::Pattern::new(p)
                .map_err(|e| FilesError::Invalid(format!("exclude_files `{p}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let excluded = |src: &Path| {
        let relative = src.strip_prefix(app).unwrap_or(src);
        exclude.iter().any(|p| p.matches_path(relative))
    };
    let mut copied = 0;
    let mut copy = |from: &Path, to: PathBuf| -> Result<(), FilesError> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|source| FilesError::Create {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::copy(from, &to).map_err(|source| FilesError::Copy {
            from: from.to_path_buf(),
            to,
            source,
        })?;
        copied += 1;
        Ok(())
    };
    std::fs::create_dir_all(dest).map_err(|source| FilesError::Create {
        path: dest.to_path_buf(),
        source,
    })?;
    for mount in mounts {
        check_mount(app, mount).map_err(FilesError::Invalid)?;
        match mount {
            FileMount::Pattern(p) => {
                let path = app.join(p);
                if path.is_file() {
                    copy(&path, dest.join(p))?;
                    continue;
                }
                let pattern = if path.is_dir() {
                    path.join("**/*")
                } else {
                    path.clone()
                };
                for src in files_matching(&pattern)? {
                    if excluded(&src) {
                        continue;
                    }
                    let relative = src.strip_prefix(app).unwrap_or(&src);
                    copy(&src, dest.join(relative))?;
                }
            }
            FileMount::Placement {
                source,
                destination,
            } => {
                let src = app.join(source);
                let to = dest.join(destination.trim_start_matches('/'));
                if src.is_file() {
                    copy(&src, to)?;
                    continue;
                }
                for file in files_matching(&src.join("**/*"))? {
                    if excluded(&file) {
                        continue;
                    }
                    let relative = file.strip_prefix(&src).unwrap_or(&file);
                    copy(&file, to.join(relative))?;
                }
            }
        }
    }
    Ok(copied)
}

fn files_matching(pattern: &Path) -> Result<Vec<PathBuf>, FilesError> {
    let text = pattern
        .to_str()
        .ok_or_else(|| FilesError::Invalid(format!("{} is not UTF-8", pattern.display())))?;
    let paths = glob::glob(text)
        .map_err(|e| FilesError::Invalid(format!("`{text}` is not a valid glob: {e}")))?;
    Ok(paths.flatten().filter(|p| p.is_file()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, body) in [
            ("static/index.html", "index"),
            ("static/css/site.css", "css"),
            ("static/secret.key", "key"),
            ("data/a.txt", "a"),
            ("data/b.json", "b"),
            ("readme.md", "readme"),
        ] {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        dir
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut all: Vec<String> = glob::glob(&format!("{}/**/*", root.display()))
            .unwrap()
            .flatten()
            .filter(|p| p.is_file())
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        all.sort();
        all
    }

    #[test]
    fn patterns_placements_and_exclusions_stage_as_spin_does() {
        let app = app();
        let out = tempfile::tempdir().unwrap();
        let mounts = [
            FileMount::Pattern("readme.md".into()),
            FileMount::Pattern("data/*.txt".into()),
            FileMount::Placement {
                source: "static".into(),
                destination: "/site".into(),
            },
            FileMount::Placement {
                source: "data/b.json".into(),
                destination: "/config/b.json".into(),
            },
        ];
        let n = stage(app.path(), &mounts, &["static/*.key".into()], out.path()).unwrap();
        assert_eq!(
            listing(out.path()),
            [
                "config/b.json",
                "data/a.txt",
                "readme.md",
                "site/css/site.css",
                "site/index.html"
            ]
        );
        assert_eq!(n, 5);
        assert_eq!(std::fs::read_to_string(out.path().join("site/index.html")).unwrap(), "index");
    }

    #[test]
    fn a_directory_pattern_keeps_its_path() {
        let app = app();
        let out = tempfile::tempdir().unwrap();
        stage(app.path(), &[FileMount::Pattern("static".into())], &[], out.path()).unwrap();
        assert_eq!(
            listing(out.path()),
            ["static/css/site.css", "static/index.html", "static/secret.key"]
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let app = app();
        let bad = [
            FileMount::Pattern("missing.txt".into()),
            FileMount::Pattern("../outside/*".into()),
            FileMount::Pattern("static/..".into()),
            FileMount::Placement {
                source: "nope".into(),
                destination: "/".into(),
            },
            FileMount::Placement {
                source: "readme.md".into(),
                destination: "/".into(),
            },
            FileMount::Placement {
                source: "static".into(),
                destination: "/../x".into(),
            },
        ];
        for mount in bad {
            assert!(check_mount(app.path(), &mount).is_err(), "{mount:?} was accepted");
        }
        assert!(check_mount(app.path(), &FileMount::Pattern("data/*.json".into())).is_ok());
    }
}
