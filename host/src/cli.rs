//! The `spindle` command line, shaped after `spin`.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "spindle",
    version,
    about = "Run spin.toml WebAssembly applications"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the application: serve its HTTP routes until Ctrl-C.
    Up(UpArgs),
    /// Run the components' build commands.
    Build(BuildArgs),
    /// Hot-redeploy one component to a running `spindle up`.
    Deploy(DeployArgs),
    /// Return a component to its previous version.
    Rollback(RollbackArgs),
    /// List the components of a running `spindle up`: versions, routes, queues.
    Status(StatusArgs),
    /// List a queue's dead letters, or put them back on the queue (--replay).
    DeadLetters(DeadLettersArgs),
}

/// Where the running host's admin API is, and its token.
#[derive(Args)]
pub struct AdminArgs {
    /// The admin API of `spindle up` (its --admin-listen). The token is
    /// SPINDLE_ADMIN_TOKEN, or else the one in STATE_DIR/admin-token.
    #[arg(
        long,
        env = "SPINDLE_ADMIN_URL",
        default_value = "http://127.0.0.1:3001"
    )]
    pub admin: String,
    /// A CA certificate (PEM) to trust for an https admin API, besides the
    /// public roots: for a host whose --admin-tls-cert is self-signed or
    /// from a private CA.
    #[arg(long, env = "SPINDLE_ADMIN_CA_CERT", value_name = "PEM")]
    pub admin_ca_cert: Option<PathBuf>,
    /// The state directory of `spindle up` (its --state-dir), where it
    /// keeps the admin token it generated when SPINDLE_ADMIN_TOKEN is unset.
    #[arg(long, default_value = ".spindle")]
    pub state_dir: PathBuf,
}

#[derive(Args)]
pub struct DeployArgs {
    /// The component to replace.
    pub component: String,
    /// The new component [default: its `source` in the manifest].
    pub wasm: Option<PathBuf>,
    /// The manifest naming the component's source.
    #[arg(long, short = 'f', default_value = "spin.toml")]
    pub manifest: PathBuf,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub struct RollbackArgs {
    /// The component to roll back.
    pub component: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub struct DeadLettersArgs {
    /// The queue whose dead letters (QUEUE.dead) to show.
    pub queue: String,
    /// Put them back on the queue, oldest first, with their attempts reset.
    #[arg(long)]
    pub replay: bool,
    /// How many to list or replay (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print the admin API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Print the admin API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub struct UpArgs {
    /// The application: its manifest, or the folder holding its spin.toml.
    #[arg(
        long = "from",
        short = 'f',
        visible_alias = "manifest",
        alias = "from-file",
        default_value = "spin.toml"
    )]
    pub manifest: PathBuf,
    /// Set an environment variable for every component: KEY=VALUE
    /// (repeatable; over the manifest's `environment`).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env_var)]
    pub env: Vec<(String, String)>,
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Runtime config (TOML) choosing backends, variables and limits.
    #[arg(long)]
    pub runtime_config_file: Option<PathBuf>,
    /// Set an application variable: NAME=VALUE (repeatable).
    #[arg(long = "variable", value_name = "NAME=VALUE")]
    pub variables: Vec<String>,
    /// Set a key in the `default` key-value store at start-up: KEY=VALUE
    /// (repeatable).
    #[arg(long = "key-value", value_name = "KEY=VALUE")]
    pub key_values: Vec<String>,
    /// Run a statement against the `default` SQLite database at start-up,
    /// or every statement in a file with @FILE (repeatable, in order).
    #[arg(long, value_name = "STATEMENT|@FILE")]
    pub sqlite: Vec<String>,
    /// Build the components before starting.
    #[arg(long)]
    pub build: bool,
    /// Rebuild a component when its `build.watch` files change and swap it
    /// in place (a hot redeploy, recorded as `watch`).
    #[arg(long)]
    pub watch: bool,
    /// Where embedded backends keep their data.
    #[arg(long, default_value = ".spindle")]
    pub state_dir: PathBuf,
    /// Where compiled components are cached [default: STATE_DIR/cache].
    #[arg(long, env = "SPINDLE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Address of the admin listener (health, readiness, metrics).
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub admin_listen: SocketAddr,
    /// Serve the admin listener over TLS with this certificate chain (PEM).
    #[arg(
        long,
        env = "SPINDLE_ADMIN_TLS_CERT",
        value_name = "PEM",
        requires = "admin_tls_key"
    )]
    pub admin_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --admin-tls-cert.
    #[arg(
        long,
        env = "SPINDLE_ADMIN_TLS_KEY",
        value_name = "PEM",
        requires = "admin_tls_cert"
    )]
    pub admin_tls_key: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, how long in-flight requests and queue
    /// invocations may take to finish before the host exits.
    #[arg(long, default_value_t = 60)]
    pub drain_timeout_secs: u64,
}

#[derive(Args)]
pub struct BuildArgs {
    /// The application: its manifest, or the folder holding its spin.toml.
    #[arg(
        long = "from",
        short = 'f',
        visible_alias = "manifest",
        alias = "from-file",
        default_value = "spin.toml"
    )]
    pub manifest: PathBuf,
    /// Components to build (default: all).
    pub components: Vec<String>,
}

/// `-e KEY=VALUE`, as `spin up -e` takes it.
fn parse_env_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn spin_up_habits_parse() {
        let cli = Cli::try_parse_from([
            "spindle",
            "up",
            "-f",
            "app/",
            "-e",
            "A=1",
            "--env",
            "B=x=y",
            "--key-value",
            "k=v",
            "--sqlite",
            "@init.sql",
        ])
        .unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.manifest, PathBuf::from("app/"));
        assert_eq!(
            up.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(up.key_values, ["k=v"]);
        assert_eq!(up.sqlite, ["@init.sql"]);
        for flag in ["--from", "--manifest", "--from-file"] {
            let cli = Cli::try_parse_from(["spindle", "up", flag, "x.toml"]).unwrap();
            let Command::Up(up) = cli.command else {
                panic!("not up")
            };
            assert_eq!(up.manifest, PathBuf::from("x.toml"));
        }
        assert!(Cli::try_parse_from(["spindle", "up", "-e", "NOEQUALS"]).is_err());
    }

    #[test]
    fn a_misspelt_flag_names_the_closest() {
        let err = match Cli::try_parse_from(["spindle", "up", "--varible", "a=b"]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("--varible was accepted"),
        };
        assert!(err.contains("unexpected argument '--varible'"), "{err}");
        assert!(
            err.contains("a similar argument exists: '--variable'"),
            "{err}"
        );
    }
}
