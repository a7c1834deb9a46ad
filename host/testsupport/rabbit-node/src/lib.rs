//! A RabbitMQ node of a test's own: started from the machine's
//! `rabbitmq-server` with its own name, ports, data and config (so the
//! shared broker's `/etc/rabbitmq` settings and data are untouched), and
//! stopped when dropped. Tests that restart or stop the broker use it, so
//! every other test keeps its broker.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a node may take to boot (Erlang on a busy 2-core machine).
const BOOT: Duration = Duration::from_secs(90);

pub struct RabbitNode {
    name: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RabbitNode {
    /// Boots a node and waits until it accepts AMQP connections.
    pub fn start(tag: &str) -> Result<RabbitNode, String> {
        let port = free_port()?;
        let dist = free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("rabbit-node-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let path = dir.path();
        write(
            path,
            "rabbitmq.conf",
            &format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )?;
        write(path, "env.conf", "")?;
        write(path, "enabled_plugins", "[].\n")?;
        // rabbitmq-server may drop to the `rabbitmq` user: let it write here.
        open_up(path)?;
        let name = format!("spindle-{tag}-{}@localhost", std::process::id());
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq"))
            .env("RABBITMQ_CONF_ENV_FILE", path.join("env.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                path.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", path.join("log"))
            .env("RABBITMQ_PID_FILE", path.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .status()
            .map_err(|e| format!("running rabbitmq-server: {e}"))?;
        if !status.success() {
            return Err(format!("rabbitmq-server -detached exited with {status}"));
        }
        let node = RabbitNode {
            name,
            port,
            _dir: dir,
        };
        node.wait_until_up()?;
        Ok(node)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `rabbitmqctl` against this node; returns its output.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .map_err(|e| format!("running rabbitmqctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the broker (every connection drops, durable data stays).
    pub fn stop_app(&self) -> Result<(), String> {
        self.ctl(&["stop_app"]).map(drop)
    }

    /// Starts it again and waits for AMQP.
    pub fn start_app(&self) -> Result<(), String> {
        self.ctl(&["start_app"])?;
        self.wait_until_up()
    }

    /// Closes every client connection from the broker's side.
    pub fn close_all_connections(&self) -> Result<(), String> {
        self.ctl(&["close_all_connections", "closed by the test"])
            .map(drop)
    }

    fn wait_until_up(&self) -> Result<(), String> {
        let deadline = Instant::now() + BOOT;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "RabbitMQ node {} did not listen on {} within {BOOT:?}",
            self.name, self.port
        ))
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    std::fs::write(dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))
}

#[cfg(unix)]
fn open_up(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", p.display()))
    };
    set(dir, 0o777)?;
    for name in ["rabbitmq.conf", "env.conf", "enabled_plugins"] {
        set(&dir.join(name), 0o644)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn open_up(_: &Path) -> Result<(), String> {
    Ok(())
}
