//! Access control through the official driver: SCRAM-SHA-256 logins (the
//! driver's speculative one in `hello` and the ordinary one), users made
//! with `createUser` as mongosh sends it, and built-in roles per database.

use futures::io::{AsyncReadExt, AsyncWriteExt};
use mongo_wire::{Options, ServerHandle};
use mongodb::Client;
use mongodb::bson::{Binary, Document, doc, spec::BinarySubtype};
use mongodb::error::{Error, ErrorKind};

use crate::error_code;

const ROOT: &str = "root";
const ROOT_PASSWORD: &str = "root-secret";

async fn server() -> ServerHandle {
    mongo_wire::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Options::auth(ROOT, ROOT_PASSWORD),
    )
    .await
    .unwrap()
}

/// A client logging in as `user` (percent-encoding is not needed for the
/// names used here) against `auth_source`.
async fn client_as(server: &ServerHandle, user: &str, password: &str, auth_source: &str) -> Client {
    let addr = server.addr();
    Client::with_uri_str(format!(
        "mongodb://{user}:{password}@{addr}/?authSource={auth_source}&serverSelectionTimeoutMS=5000"
    ))
    .await
    .unwrap()
}

async fn anonymous(server: &ServerHandle) -> Client {
    Client::with_uri_str(format!("{}/?serverSelectionTimeoutMS=5000", server.url()))
        .await
        .unwrap()
}

/// `db.getSiblingDB(db).createUser({user, pwd, roles})` as root.
async fn create_user(
    server: &ServerHandle,
    db: &str,
    user: &str,
    password: &str,
    roles: Vec<Document>,
) {
    client_as(server, ROOT, ROOT_PASSWORD, "admin")
        .await
        .database(db)
        .run_command(doc! { "createUser": user, "pwd": password, "roles": roles })
        .await
        .unwrap();
}

fn is_auth_failure(err: &Error) -> bool {
    matches!(err.kind.as_ref(), ErrorKind::Authentication { message, .. } if message.contains("Authentication failed"))
}

async fn insert_one(client: &Client, db: &str) -> Result<(), Error> {
    client
        .database(db)
        .collection::<Document>("things")
        .insert_one(doc! { "x": 1 })
        .await
        .map(drop)
}

#[tokio::test]
async fn right_password_logs_in_wrong_ones_are_refused() {
    let server = server().await;
    create_user(
        &server,
        "admin",
        "app",
        "app-secret",
        vec![doc! { "role": "readWrite", "db": "videos" }],
    )
    .await;

    let app = client_as(&server, "app", "app-secret", "admin").await;
    insert_one(&app, "videos").await.unwrap();
    let found = app
        .database("videos")
        .collection::<Document>("things")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.get_i32("x").unwrap(), 1);

    for (user, password, source) in [
        ("app", "wrong", "admin"),
        ("nobody", "app-secret", "admin"),
        // The user lives in `admin`, not in `videos`.
        ("app", "app-secret", "videos"),
    ] {
        let client = client_as(&server, user, password, source).await;
        let err = insert_one(&client, "videos").await.unwrap_err();
        assert!(is_auth_failure(&err), "{user}/{password}@{source}: {err}");
    }
}

#[tokio::test]
async fn commands_need_a_login_and_a_role_on_their_database() {
    let server = server().await;
    let nobody = anonymous(&server).await;
    // The handshake and ping need no login...
    nobody
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .unwrap();
    // ...everything else does.
    let err = insert_one(&nobody, "videos").await.unwrap_err();
    assert_eq!(error_code(&err), Some(13), "{err}");
    assert!(err.to_string().contains("requires authentication"), "{err}");

    create_user(
        &server,
        "admin",
        "app",
        "app-secret",
        vec![
            doc! { "role": "readWrite", "db": "videos" },
            doc! { "role": "read", "db": "mp3s" },
        ],
    )
    .await;
    let app = client_as(&server, "app", "app-secret", "admin").await;

    // No role on the database: refused, in mongod's words.
    let err = insert_one(&app, "spindle-deploys").await.unwrap_err();
    assert_eq!(error_code(&err), Some(13), "{err}");
    assert!(
        err.to_string()
            .contains("not authorized on spindle-deploys to execute command"),
        "{err}"
    );
    let err = app
        .database("spindle-deploys")
        .collection::<Document>("things")
        .find_one(doc! {})
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(13), "{err}");

    // read: finds, but no writes.
    app.database("mp3s")
        .collection::<Document>("things")
        .find_one(doc! {})
        .await
        .unwrap();
    let err = insert_one(&app, "mp3s").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("not authorized on mp3s to execute command"),
        "{err}"
    );

    // readWrite: all GridFS needs (indexes included) on its database.
    let bucket = app.database("videos").gridfs_bucket(None);
    let mut upload = bucket.open_upload_stream("clip").await.unwrap();
    upload.write_all(b"some video bytes").await.unwrap();
    upload.close().await.unwrap();
    let mut back = Vec::new();
    bucket
        .open_download_stream(upload.id().clone())
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert_eq!(back, b"some video bytes");

    // Users are administered by user administrators only.
    let err = app
        .database("videos")
        .run_command(doc! { "createUser": "other", "pwd": "x", "roles": ["readWrite"] })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(13), "{err}");
}

#[tokio::test]
async fn users_live_in_their_database_and_can_be_dropped() {
    let server = server().await;
    // A role given by name applies to the user's own database.
    create_user(&server, "videos", "local", "local-secret", vec![]).await;
    let root = client_as(&server, ROOT, ROOT_PASSWORD, "admin").await;
    root.database("videos")
        .run_command(doc! { "dropUser": "local" })
        .await
        .unwrap();
    root.database("videos")
        .run_command(doc! { "createUser": "local", "pwd": "local-secret", "roles": ["readWrite"] })
        .await
        .unwrap();
    let err = root
        .database("videos")
        .run_command(doc! { "createUser": "local", "pwd": "again", "roles": [] })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(51003), "{err}");
    let err = root
        .database("videos")
        .run_command(doc! { "createUser": "x", "pwd": "x", "roles": [{ "role": "readWriteAnyDatabase", "db": "videos" }] })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(31), "{err}");

    let local = client_as(&server, "local", "local-secret", "videos").await;
    insert_one(&local, "videos").await.unwrap();
    let err = insert_one(&local, "mp3s").await.unwrap_err();
    assert_eq!(error_code(&err), Some(13), "{err}");

    root.database("videos")
        .run_command(doc! { "dropUser": "local" })
        .await
        .unwrap();
    let err = root
        .database("videos")
        .run_command(doc! { "dropUser": "local" })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(11), "{err}");
    // A dropped user keeps no rights, logged in or not.
    let err = insert_one(&local, "videos").await.unwrap_err();
    assert_eq!(error_code(&err), Some(13), "{err}");
    let again = client_as(&server, "local", "local-secret", "videos").await;
    assert!(is_auth_failure(
        &insert_one(&again, "videos").await.unwrap_err()
    ));
}

#[tokio::test]
async fn any_database_roles_reach_every_database() {
    let server = server().await;
    create_user(
        &server,
        "admin",
        "ops",
        "ops-secret",
        vec![doc! { "role": "readWriteAnyDatabase", "db": "admin" }],
    )
    .await;
    let ops = client_as(&server, "ops", "ops-secret", "admin").await;
    for db in ["videos", "mp3s", "spindle-deploys"] {
        insert_one(&ops, db).await.unwrap();
    }
    let err = ops
        .database("videos")
        .run_command(doc! { "dropDatabase": 1 })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(13), "{err}");
}

/// The handshake half the driver relies on: `saslSupportedMechs` names
/// SCRAM-SHA-256 for a known user, and a `speculativeAuthenticate` gets the
/// server's first SCRAM message back (answering with the client's nonce).
#[tokio::test]
async fn hello_negotiates_and_starts_speculative_logins() {
    let server = server().await;
    let client = anonymous(&server).await;
    let hello = |user: &str| {
        doc! {
            "hello": 1,
            "saslSupportedMechs": format!("admin.{user}"),
            "speculativeAuthenticate": {
                "saslStart": 1,
                "mechanism": "SCRAM-SHA-256",
                "payload": Binary { subtype: BinarySubtype::Generic, bytes: format!("n,,n={user},r=clientnonce").into_bytes() },
                "options": { "skipEmptyExchange": true },
                "db": "admin",
            },
        }
    };
    let reply = client
        .database("admin")
        .run_command(hello(ROOT))
        .await
        .unwrap();
    let mechs: Vec<&str> = reply
        .get_array("saslSupportedMechs")
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    assert_eq!(mechs, ["SCRAM-SHA-256"]);
    let first = reply.get_document("speculativeAuthenticate").unwrap();
    assert!(!first.get_bool("done").unwrap());
    let payload = String::from_utf8(first.get_binary_generic("payload").unwrap().clone()).unwrap();
    assert!(payload.starts_with("r=clientnonce"), "{payload}");
    assert!(
        payload.contains(",s=") && payload.ends_with(",i=15000"),
        "{payload}"
    );

    // An unknown user: neither, and the handshake still succeeds.
    let reply = client
        .database("admin")
        .run_command(hello("nobody"))
        .await
        .unwrap();
    assert!(reply.get("saslSupportedMechs").is_none(), "{reply}");
    assert!(reply.get("speculativeAuthenticate").is_none(), "{reply}");
}

#[tokio::test]
async fn without_auth_nothing_is_enforced() {
    let (_server, client) = crate::setup().await;
    insert_one(&client, "spindle-deploys").await.unwrap();
}
