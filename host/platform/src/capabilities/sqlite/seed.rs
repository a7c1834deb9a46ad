//! `--sqlite` flags, run in order at start-up as `spin up --sqlite` runs
//! them: a statement runs against `default`; `@FILE` runs every statement
//! in FILE against `default`, `@FILE:LABEL` against database LABEL. The
//! first failure stops start-up, naming the flag.

use super::config::Databases;
use super::reason;
use anyhow::{Context, anyhow, bail};

pub async fn run(databases: &Databases, flags: &[String]) -> anyhow::Result<()> {
    for flag in flags {
        if let Some(spec) = flag.strip_prefix('@') {
            let (file, label) = file_and_label(spec)?;
            let db = databases.get(label).with_context(|| {
                format!("--sqlite {flag}: there is no SQLite database `{label}`; configure [sqlite_database.{label}] in the runtime config")
            })?;
            let sql = tokio::fs::read_to_string(file)
                .await
                .with_context(|| format!("--sqlite {flag}: cannot read {file}"))?;
            let conn = db.connect().await.map_err(|e| anyhow!("--sqlite {flag}: {}", reason(&e)))?;
            conn.execute_batch(sql).await.map_err(|e| {
                anyhow!(
                    "--sqlite {flag}: the statements in {file} failed against database `{label}`: {}",
                    reason(&e)
                )
            })?;
            tracing::info!(file, database = label, "--sqlite: ran the statements in the file");
        } else {
            let db = databases
                .get("default")
                .context("there is no `default` SQLite database")?;
            let conn = db.connect().await.map_err(|e| anyhow!("--sqlite: {}", reason(&e)))?;
            conn.execute(flag.clone(), Vec::new()).await.map_err(|e| {
                anyhow!(
                    "--sqlite: the statement '{flag}' failed against the default database: {}",
                    reason(&e)
                )
            })?;
            tracing::info!(statement = %flag, "--sqlite: ran the statement");
        }
    }
    Ok(())
}

/// `FILE` or `FILE:LABEL` (after the `@`).
fn file_and_label(spec: &str) -> anyhow::Result<(&str, &str)> {
    let spec = spec.trim();
    if spec.is_empty() {
        bail!("--sqlite @: no file named; use --sqlite @FILE or @FILE:LABEL");
    }
    match spec.split_once(':') {
        Some((file, _)) if file.trim().is_empty() => {
            bail!("--sqlite @{spec}: the file is empty; use --sqlite @FILE:LABEL")
        }
        Some((_, label)) if label.trim().is_empty() => {
            bail!("--sqlite @{spec}: the database label is empty; use --sqlite @FILE:LABEL")
        }
        Some((file, label)) => Ok((file.trim(), label.trim())),
        None => Ok((spec, "default")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_label_split_as_in_spin() {
        assert_eq!(file_and_label("a.sql").unwrap(), ("a.sql", "default"));
        assert_eq!(file_and_label(" a.sql : db ").unwrap(), ("a.sql", "db"));
        assert!(file_and_label("a.sql:").is_err());
        assert!(file_and_label(":db").is_err());
        assert!(file_and_label("").is_err());
    }
}
