use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use mongodb::bson::doc;

/// Kills the child on drop so a failing test leaves nothing running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_serves_ping() {
    let child = Command::new(env!("CARGO_BIN_EXE_mongo-wire"))
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("mongo-wire listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(url.starts_with("mongodb://127.0.0.1:"), "{url}");

    let client = mongodb::Client::with_uri_str(format!("{url}/?serverSelectionTimeoutMS=5000"))
        .await
        .unwrap();
    let reply = client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .unwrap();
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0);
}
