//! Raw wire-level checks: legacy OP_QUERY handshake and malformed input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use mongodb::bson::{Document, doc};

use crate::setup;

fn op_query(collection: &str, query: &Document) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(0i32.to_le_bytes());
    body.extend(collection.as_bytes());
    body.push(0);
    body.extend(0i32.to_le_bytes());
    body.extend((-1i32).to_le_bytes());
    body.extend(mongodb::bson::to_vec(query).unwrap());
    let mut msg = Vec::new();
    msg.extend(((16 + body.len()) as i32).to_le_bytes());
    msg.extend(42i32.to_le_bytes());
    msg.extend(0i32.to_le_bytes());
    msg.extend(2004i32.to_le_bytes());
    msg.extend(body);
    msg
}

/// Reads one OP_REPLY and returns (responseTo, opCode, document).
fn read_reply(stream: &mut TcpStream) -> (i32, i32, Document) {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).unwrap();
    let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let response_to = i32::from_le_bytes(header[8..12].try_into().unwrap());
    let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
    let mut body = vec![0u8; len - 16];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(
        i32::from_le_bytes(body[16..20].try_into().unwrap()),
        1,
        "numberReturned"
    );
    (response_to, op, Document::from_reader(&body[20..]).unwrap())
}

#[tokio::test]
async fn legacy_hello_and_malformed_messages() {
    let (server, client) = setup().await;
    let addr = server.addr();
    let (legacy, unsupported, after_garbage) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(&op_query(
                "admin.$cmd",
                &doc! { "isMaster": 1, "helloOk": true },
            ))
            .unwrap();
        let legacy = read_reply(&mut stream);
        stream
            .write_all(&op_query("admin.$cmd", &doc! { "find": "x" }))
            .unwrap();
        let unsupported = read_reply(&mut stream);

        // Garbage: a length far beyond the limit. The server drops this connection.
        let mut bad = TcpStream::connect(addr).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        bad.write_all(&[
            0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ])
        .unwrap();
        let mut buf = [0u8; 1];
        let after_garbage = bad.read(&mut buf);
        // An OP_MSG whose body document is truncated.
        let mut cut = TcpStream::connect(addr).unwrap();
        cut.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut msg = Vec::new();
        msg.extend(30i32.to_le_bytes());
        msg.extend([0u8; 8]);
        msg.extend(2013i32.to_le_bytes());
        msg.extend([0, 0, 0, 0, 0, 50, 0, 0, 0, 1, 2, 3, 4, 5]);
        cut.write_all(&msg).unwrap();
        assert!(matches!(cut.read(&mut buf), Ok(0) | Err(_)));
        // The first connection still works.
        stream
            .write_all(&op_query("admin.$cmd", &doc! { "ping": 1 }))
            .unwrap();
        assert_eq!(read_reply(&mut stream).2.get_i32("code").unwrap(), 352);
        (legacy, unsupported, after_garbage)
    })
    .await
    .unwrap();

    let (response_to, op, reply) = legacy;
    assert_eq!((response_to, op), (42, 1));
    assert!(reply.get_bool("ismaster").unwrap());
    assert!(reply.get_bool("helloOk").unwrap());
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0);
    assert_eq!(
        reply.get_i32("maxBsonObjectSize").unwrap(),
        16 * 1024 * 1024
    );
    let (_, _, reply) = unsupported;
    assert_eq!(reply.get_f64("ok").unwrap(), 0.0);
    assert_eq!(reply.get_i32("code").unwrap(), 352);
    assert!(
        matches!(after_garbage, Ok(0) | Err(_)),
        "connection should be closed"
    );

    // And the server as a whole is fine.
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .unwrap();
}

#[test]
fn background_server_for_sync_callers() {
    let server = mongo_wire::start_in_background("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = server.url();
    assert_eq!(url, format!("mongodb://127.0.0.1:{}", server.addr().port()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = mongodb::Client::with_uri_str(format!("{url}/?serverSelectionTimeoutMS=5000"))
            .await
            .unwrap();
        let db = client.database("sync");
        db.collection::<Document>("c")
            .insert_one(doc! { "x": 1 })
            .await
            .unwrap();
        assert_eq!(
            db.collection::<Document>("c")
                .count_documents(doc! {})
                .await
                .unwrap(),
            1
        );
    });
    let addr = server.addr();
    server.shutdown();
    // Joined and closed: the port no longer accepts connections.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

#[tokio::test]
async fn deeply_nested_documents_within_the_limit() {
    let (_server, client) = setup().await;
    let coll = client.database("app").collection::<Document>("deep");
    // 90 levels (MongoDB allows 100 including the command envelope); built
    // from the inside out so the test itself needs no recursion.
    let mut nested = doc! { "leaf": true };
    for _ in 0..90 {
        nested = doc! { "a": nested };
    }
    let original = doc! { "_id": 1, "a": nested };
    coll.insert_one(original.clone()).await.unwrap();
    let back = coll.find_one(doc! { "_id": 1 }).await.unwrap().unwrap();
    assert!(back == original);
}
