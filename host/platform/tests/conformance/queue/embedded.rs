//! The embedded queue: every shared behaviour, and what only it has: a
//! real process killed mid-handling, the one-process-per-directory lock,
//! and a full disk.

use std::path::Path;
use std::time::Duration;

use spindle_platform::capabilities::queue::{Broker, ConsumeOptions, Outcome, QueueError};

use super::backend::{Backend, Seen, handler};

every_behaviour!(|_| Some(Backend::embedded()));

const CHILD_DIR_VAR: &str = "SPINDLE_TEST_QUEUE_CHILD_DIR";
const QUEUE: &str = "jobs";

/// Not a test on its own: the child process of `survives_kill_mid_handling`.
/// It takes the message, marks that it is handling it, and hangs until killed.
#[test]
fn crash_child_helper() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let broker = Broker::connect(None, Path::new(&dir), &[QUEUE])
            .await
            .expect("child connect");
        let marker = Path::new(&dir).join("handling");
        let _consumer = broker
            .consume(
                QUEUE,
                ConsumeOptions::default(),
                handler(move |d| {
                    std::fs::write(&marker, &d.body).expect("marker");
                    std::future::pending::<Outcome>()
                }),
            )
            .await
            .expect("child consume");
        std::future::pending::<()>().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_mid_handling() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::connect(None, dir.path(), &[QUEUE])
        .await
        .expect("connect");
    broker.publish(QUEUE, b"precious").await.expect("publish");
    drop(broker);

    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "queue::embedded::crash_child_helper",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_DIR_VAR, dir.path())
        .kill_on_drop(true)
        .spawn()
        .expect("start the child process");
    let marker = dir.path().join("handling");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child never started handling"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.expect("SIGKILL the child");

    let broker = Broker::connect(None, dir.path(), &[QUEUE])
        .await
        .expect("connect after the kill");
    let seen = Seen::default();
    let s = seen.clone();
    let consumer = broker
        .consume(
            QUEUE,
            ConsumeOptions::default(),
            handler(move |d| {
                s.push(d);
                async { Outcome::Ack }
            }),
        )
        .await
        .expect("consume");
    let got = seen.wait_until("the redelivery", |d| !d.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.stop().await;
    let got_all = seen.snapshot();
    assert_eq!(got_all.len(), 1, "delivered once after the restart");
    assert_eq!(
        (got[0].body.as_slice(), got[0].attempt),
        (&b"precious"[..], 2),
        "the killed delivery counts"
    );
}

#[tokio::test]
async fn a_second_owner_is_refused() {
    let Backend::Embedded(dir) = Backend::embedded() else {
        unreachable!()
    };
    let first = Broker::connect(None, dir.path(), &[QUEUE])
        .await
        .expect("first");
    let second = Broker::connect(None, dir.path(), &[QUEUE]).await;
    let Err(err @ QueueError::Io { .. }) = second else {
        panic!("a second owner must be refused");
    };
    assert!(err.to_string().contains("another spindle process"), "{err}");
    assert!(first.describe().starts_with("embedded queue in "));
    drop(first);
    Broker::connect(None, dir.path(), &[QUEUE])
        .await
        .expect("free again once the first is gone");
}

/// A tmpfs of its own (mounting needs root), unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(kib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?
            .success();
        mounted.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_messages_and_loses_none() {
    let Some(disk) = SmallDisk::mount(1024) else {
        eprintln!(
            "SKIPPED: mounting a small tmpfs needs root; the full-disk queue test did not run"
        );
        return;
    };
    let dir = disk.0.path();
    let broker = Broker::connect(None, dir, &[QUEUE]).await.expect("connect");
    broker.publish(QUEUE, b"before").await.expect("publish");

    // Fill what is left of the disk.
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let block = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut file, &block).is_ok() {}
    drop(file);
    let full = broker.publish(QUEUE, &vec![b'x'; 64 * 1024]).await;
    let Err(e) = full else {
        panic!("a message was accepted on a full disk");
    };
    assert!(e.is_storage_full(), "{e}");

    // Room again: the queue takes messages and still has the first one.
    std::fs::remove_file(&filler).expect("remove filler");
    broker.publish(QUEUE, b"after").await.expect("publish");
    let seen = Seen::default();
    let s = seen.clone();
    // One at a time, so the order they are handled in is the queue's.
    let one_at_a_time = ConsumeOptions {
        prefetch: 1,
        concurrency: 1,
        ..ConsumeOptions::default()
    };
    let consumer = broker
        .consume(
            QUEUE,
            one_at_a_time,
            handler(move |d| {
                s.push(d);
                async { Outcome::Ack }
            }),
        )
        .await
        .expect("consume");
    let seen = seen.wait_until("both messages", |s| s.len() == 2).await;
    consumer.stop().await;
    let bodies: Vec<Vec<u8>> = seen.into_iter().map(|d| d.body).collect();
    assert_eq!(bodies, vec![b"before".to_vec(), b"after".to_vec()]);
}
