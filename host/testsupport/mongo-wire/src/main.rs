//! Runs the in-memory MongoDB wire-protocol server standalone, e.g. to try
//! Spindle against a "real" MongoDB endpoint by hand:
//!
//! ```text
//! mongo-wire --port 27017
//! mongo-wire --port 27017 --root-user root   # access control on; the
//!                                            # password from MONGO_WIRE_ROOT_PASSWORD
//! ```
//!
//! Prints `mongo-wire listening on mongodb://ADDR` on stdout once it accepts
//! connections (tests wait for that line), logs to stderr (`RUST_LOG`), and
//! serves until Ctrl-C (or SIGTERM).

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};

use clap::Parser;

/// In-memory MongoDB wire-protocol server for tests (not a database).
#[derive(Debug, Parser)]
#[command(name = "mongo-wire", version)]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 27017)]
    port: u16,
    /// Turn access control on, with this user as `root` on `admin`.
    #[arg(long, requires = "root_password")]
    root_user: Option<String>,
    /// The root user's password.
    #[arg(long, env = "MONGO_WIRE_ROOT_PASSWORD", hide_env_values = true)]
    root_password: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let options = match (args.root_user, args.root_password) {
        (Some(user), Some(password)) => mongo_wire::Options::auth(user, password),
        _ => mongo_wire::Options::default(),
    };
    let server = mongo_wire::start_with(SocketAddr::new(args.bind, args.port), options).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "mongo-wire listening on mongodb://{}",
            server.addr()
        )?;
        stdout.flush()?;
    }
    shutdown_signal().await;
    server.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
