//! A component is code the host runs: it must stay inside its grants even
//! when it tries to leave them (issue: contain what a component can do).

use crate::support::{self, UpOptions, up, up_fails, write_manifest};

fn manifest(extra: &str) -> String {
    let wasm = support::build_components();
    format!(
        r#"spin_manifest_version = 2
[application]
name = "grants"
[[trigger.http]]
route = "/..."
component = "testbed"
[component.testbed]
source = "{tb}"
mysql_databases = ["default"]
allowed_outbound_hosts = ["mysql://127.0.0.1:3306"]
{extra}
"#,
        tb = wasm.join("testbed.wasm").display(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_cannot_leave_its_database_or_reach_platform_names() {
    let (_dir, path) = write_manifest(&manifest(""));
    let s = up(UpOptions::new(&path));
    let c = support::client();
    let sql = |db: &str, statement: String| {
        c.post(format!("{}/sql", s.url))
            .header("x-db", db)
            .body(statement)
            .send()
    };
    let ok = sql("default", "CREATE TABLE notes (body TEXT)".into())
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());

    let queue_db = s.state_dir.join("queue").join("queue.db");
    let stolen = s.state_dir.join("stolen.sqlite");
    let escapes = [
        format!("ATTACH '{}' AS q", queue_db.display()),
        format!("VACUUM INTO '{}'", stolen.display()),
        "SELECT load_extension('libc.so.6')".into(),
        "PRAGMA journal_mode = DELETE".into(),
        "PRAGMA writable_schema = ON".into(),
    ];
    for statement in escapes {
        let r = sql("default", statement.clone()).await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 403, "{statement}: {text}");
        assert!(text.contains("permission denied"), "{statement}: {text}");
    }
    assert!(!stolen.exists(), "VACUUM INTO wrote no file");

    // The allow-list is checked against the host the driver would use.
    let sneaky = "mysql://evil.example:3306#@127.0.0.1:3306/x";
    let r = sql(sneaky, "SELECT 1".into()).await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("mysql://evil.example:3306"), "{text}");

    // The deploy records' bucket is the platform's: not granted, refused.
    let r = c
        .get(format!(
            "{}/blob/spindle-deploys/0123456789abcdef01234567",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());

    // And granting it is refused before anything runs.
    let (_dir, path) = write_manifest(&manifest("blob_buckets = [\"spindle-deploys\"]"));
    let err = up_fails(UpOptions::new(&path));
    assert!(
        err.contains("component.testbed.blob_buckets") && err.contains("reserved for the platform"),
        "{err}"
    );
}
