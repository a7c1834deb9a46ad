use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::options::{IndexOptions, ReturnDocument};

use crate::{error_code, setup};

#[tokio::test]
async fn crud_round_trip() {
    let (_server, client) = setup().await;
    let coll = client.database("app").collection::<Document>("items");

    let id = coll
        .insert_one(doc! { "name": "a", "n": 1, "tags": ["x", "y"] })
        .await
        .unwrap()
        .inserted_id;
    assert!(matches!(id, Bson::ObjectId(_)));
    let many = coll
        .insert_many(vec![
            doc! { "_id": 10, "name": "b", "n": 2i64 },
            doc! { "_id": 11, "name": "c", "n": 3.5 },
        ])
        .await
        .unwrap();
    assert_eq!(many.inserted_ids.len(), 2);

    let found = coll
        .find_one(doc! { "_id": id.clone() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        found,
        doc! { "_id": id.clone(), "name": "a", "n": 1, "tags": ["x", "y"] }
    );
    assert_eq!(
        coll.find_one(doc! { "tags": "y" })
            .await
            .unwrap()
            .unwrap()
            .get_str("name")
            .unwrap(),
        "a"
    );
    assert!(
        coll.find_one(doc! { "name": "zzz" })
            .await
            .unwrap()
            .is_none()
    );

    let names: Vec<String> = coll
        .find(doc! { "n": { "$gte": 2 } })
        .await
        .unwrap()
        .map_ok(|d| d.get_str("name").unwrap().to_owned())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names, ["b", "c"]);

    let r = coll
        .update_one(doc! { "_id": 10 }, doc! { "$set": { "name": "B" } })
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 1));
    let r = coll
        .replace_one(doc! { "_id": 11 }, doc! { "name": "C", "replaced": true })
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 1));
    assert_eq!(
        coll.find_one(doc! { "_id": 11 }).await.unwrap().unwrap(),
        doc! { "_id": 11, "name": "C", "replaced": true }
    );

    let r = coll
        .delete_one(doc! { "name": { "$in": ["B", "C"] } })
        .await
        .unwrap();
    assert_eq!(r.deleted_count, 1);
    let r = coll.delete_many(doc! {}).await.unwrap();
    assert_eq!(r.deleted_count, 2);
    assert_eq!(coll.estimated_document_count().await.unwrap(), 0);

    // find_one_and_* use findAndModify.
    coll.insert_many((0..5).map(|i| doc! { "_id": i, "v": i * 10 }))
        .await
        .unwrap();
    let before = coll
        .find_one_and_update(doc! { "v": { "$gt": 15 } }, doc! { "$inc": { "v": 1 } })
        .sort(doc! { "v": -1 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before, doc! { "_id": 4, "v": 40 });
    let after = coll
        .find_one_and_update(doc! { "_id": 4 }, doc! { "$inc": { "v": 1 } })
        .return_document(ReturnDocument::After)
        .projection(doc! { "_id": 0 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, doc! { "v": 42 });
    let upserted = coll
        .find_one_and_update(doc! { "_id": 99 }, doc! { "$set": { "v": 0 } })
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await
        .unwrap();
    assert_eq!(upserted, Some(doc! { "_id": 99, "v": 0 }));
    let removed = coll.find_one_and_delete(doc! { "_id": 0 }).await.unwrap();
    assert_eq!(removed, Some(doc! { "_id": 0, "v": 0 }));
    assert!(
        coll.find_one_and_delete(doc! { "_id": 0 })
            .await
            .unwrap()
            .is_none()
    );
    let replaced = coll
        .find_one_and_replace(doc! { "_id": 1 }, doc! { "w": 1 })
        .return_document(ReturnDocument::After)
        .await
        .unwrap();
    assert_eq!(replaced, Some(doc! { "_id": 1, "w": 1 }));
}

#[tokio::test]
async fn cursors_honour_small_batch_sizes() {
    let (_server, client) = setup().await;
    let db = client.database("app");
    let coll = db.collection::<Document>("many");
    coll.insert_many((0..250).map(|i| doc! { "_id": i, "pad": "x".repeat(100) }))
        .await
        .unwrap();

    // Through the driver: every document, in order, across many getMores.
    let ids: Vec<i32> = coll
        .find(doc! {})
        .batch_size(7)
        .await
        .unwrap()
        .map_ok(|d| d.get_i32("_id").unwrap())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids, (0..250).collect::<Vec<_>>());

    // With skip/limit and a sort.
    let ids: Vec<i32> = coll
        .find(doc! { "_id": { "$lt": 100 } })
        .sort(doc! { "_id": -1 })
        .skip(5)
        .limit(20)
        .batch_size(3)
        .await
        .unwrap()
        .map_ok(|d| d.get_i32("_id").unwrap())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids, (75..95).rev().collect::<Vec<_>>());

    // Raw commands: batch sizes, ids, ns, firstBatch/nextBatch.
    let reply = db
        .run_command(doc! { "find": "many", "batchSize": 7 })
        .await
        .unwrap();
    let cursor = reply.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 7);
    assert_eq!(cursor.get_str("ns").unwrap(), "app.many");
    let id = cursor.get_i64("id").unwrap();
    assert_ne!(id, 0);
    let more = db
        .run_command(doc! { "getMore": id, "collection": "many", "batchSize": 200 })
        .await
        .unwrap();
    let cursor = more.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("nextBatch").unwrap().len(), 200);
    assert_eq!(cursor.get_i64("id").unwrap(), id);
    let more = db
        .run_command(doc! { "getMore": id, "collection": "many" })
        .await
        .unwrap();
    let cursor = more.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("nextBatch").unwrap().len(), 43);
    assert_eq!(cursor.get_i64("id").unwrap(), 0);
    let gone = db
        .run_command(doc! { "getMore": id, "collection": "many" })
        .await
        .unwrap_err();
    assert_eq!(error_code(&gone), Some(43));

    // Default first batch is 101; killCursors reports what it killed.
    let reply = db.run_command(doc! { "find": "many" }).await.unwrap();
    let cursor = reply.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 101);
    let id = cursor.get_i64("id").unwrap();
    let killed = db
        .run_command(doc! { "killCursors": "many", "cursors": [id, 12345i64] })
        .await
        .unwrap();
    assert_eq!(
        killed.get_array("cursorsKilled").unwrap(),
        &vec![Bson::Int64(id)]
    );
    assert_eq!(
        killed.get_array("cursorsNotFound").unwrap(),
        &vec![Bson::Int64(12345)]
    );

    // singleBatch closes the cursor after the first batch.
    let reply = db
        .run_command(doc! { "find": "many", "batchSize": 5, "singleBatch": true })
        .await
        .unwrap();
    assert_eq!(
        reply.get_document("cursor").unwrap().get_i64("id").unwrap(),
        0
    );

    // A cursor dropped half-way is killed by the driver without errors.
    let mut cursor = coll.find(doc! {}).batch_size(2).await.unwrap();
    assert!(cursor.try_next().await.unwrap().is_some());
    drop(cursor);
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .unwrap();
}

#[tokio::test]
async fn update_operators_and_upserts() {
    let (_server, client) = setup().await;
    let coll = client.database("app").collection::<Document>("up");
    coll.insert_many(vec![
        doc! { "_id": 1, "kind": "a", "n": 1, "gone": true },
        doc! { "_id": 2, "kind": "a", "n": 5i64 },
        doc! { "_id": 3, "kind": "b", "n": 1.5 },
    ])
    .await
    .unwrap();

    let r = coll
        .update_many(
            doc! { "kind": "a" },
            doc! { "$inc": { "n": 1 }, "$unset": { "gone": "" }, "$set": { "meta.seen": true }, "$setOnInsert": { "new": true } },
        )
        .await
        .unwrap();
    assert_eq!(
        (r.matched_count, r.modified_count, r.upserted_id),
        (2, 2, None)
    );
    assert_eq!(
        coll.find_one(doc! { "_id": 1 }).await.unwrap().unwrap(),
        doc! { "_id": 1, "kind": "a", "n": 2, "meta": { "seen": true } }
    );
    assert_eq!(
        coll.find_one(doc! { "_id": 2 })
            .await
            .unwrap()
            .unwrap()
            .get_i64("n")
            .unwrap(),
        6
    );

    // A no-op update matches but modifies nothing.
    let r = coll
        .update_one(doc! { "_id": 3 }, doc! { "$set": { "n": 1.5 } })
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 0));

    // Upsert builds the document from the filter's equalities.
    let r = coll
        .update_one(
            doc! { "kind": "c", "n": { "$gt": 0 } },
            doc! { "$set": { "x": 1 }, "$setOnInsert": { "created": true } },
        )
        .upsert(true)
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (0, 0));
    let id = r.upserted_id.expect("upserted id");
    assert!(id.as_object_id().is_some());
    assert_eq!(
        coll.find_one(doc! { "_id": id.clone() })
            .await
            .unwrap()
            .unwrap(),
        doc! { "_id": id, "kind": "c", "x": 1, "created": true }
    );
    let r = coll
        .update_one(doc! { "_id": "fixed" }, doc! { "$inc": { "hits": 1 } })
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(r.upserted_id, Some(Bson::String("fixed".into())));
    let r = coll
        .update_one(doc! { "_id": "fixed" }, doc! { "$inc": { "hits": 1 } })
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(
        (r.matched_count, r.modified_count, r.upserted_id),
        (1, 1, None)
    );
    assert_eq!(
        coll.find_one(doc! { "_id": "fixed" })
            .await
            .unwrap()
            .unwrap()
            .get_i32("hits")
            .unwrap(),
        2
    );
    let r = coll
        .replace_one(doc! { "_id": 7 }, doc! { "whole": 1 })
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(r.upserted_id, Some(Bson::Int32(7)));

    // Errors a driver user would see.
    let err = coll
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "_id": 5 } })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(66));
    let err = coll
        .update_one(doc! { "_id": 1 }, doc! { "$inc": { "kind": 1 } })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(14));
    let err = coll
        .update_one(doc! { "_id": 1 }, doc! { "$push": { "a": 1 } })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(9));
}

#[tokio::test]
async fn unique_indexes_reject_duplicates() {
    let (_server, client) = setup().await;
    let coll = client.database("app").collection::<Document>("users");
    let name = coll
        .create_index(
            IndexModel::builder()
                .keys(doc! { "email": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .unwrap()
        .index_name;
    assert_eq!(name, "email_1");
    coll.insert_one(doc! { "_id": 1, "email": "a@x" })
        .await
        .unwrap();

    let err = coll
        .insert_one(doc! { "_id": 2, "email": "a@x" })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(11000), "{err}");
    let err = coll
        .insert_one(doc! { "_id": 1, "email": "other" })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(11000), "{err}");
    // Ordered insert_many stops at the first duplicate.
    let err = coll
        .insert_many(vec![
            doc! { "_id": 3, "email": "c@x" },
            doc! { "_id": 4, "email": "a@x" },
            doc! { "_id": 5 },
        ])
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(11000), "{err}");
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    // Updates are checked too; numbers compare across types.
    let err = coll
        .update_one(doc! { "_id": 3 }, doc! { "$set": { "email": "a@x" } })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(11000), "{err}");
    let err = coll
        .insert_one(doc! { "_id": 1.0, "email": "z" })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(11000), "{err}");

    let indexes: Vec<IndexModel> = coll
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(indexes.len(), 2);
    assert_eq!(indexes[1].keys, doc! { "email": 1 });
    assert_eq!(
        indexes[1].options.as_ref().and_then(|o| o.unique),
        Some(true)
    );
    // Missing fields count as null in a (non-sparse) unique index.
    coll.insert_one(doc! { "_id": 8 }).await.unwrap();
    let err = coll.insert_one(doc! { "_id": 11 }).await.unwrap_err();
    assert_eq!(error_code(&err), Some(11000), "{err}");
    // A unique index cannot be built over duplicates.
    coll.insert_one(doc! { "_id": 9, "email": "9@x", "tag": "t" })
        .await
        .unwrap();
    coll.insert_one(doc! { "_id": 10, "email": "10@x", "tag": "t" })
        .await
        .unwrap();
    let err = coll
        .create_index(
            IndexModel::builder()
                .keys(doc! { "tag": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(11000), "{err}");

    coll.drop_index("email_1").await.unwrap();
    coll.insert_one(doc! { "_id": 20, "email": "a@x" })
        .await
        .unwrap();
    let err = coll.drop_index("email_1").await.unwrap_err();
    assert_eq!(error_code(&err), Some(27));
}

#[tokio::test]
async fn counting_distinct_and_aggregation() {
    let (_server, client) = setup().await;
    let coll = client.database("app").collection::<Document>("agg");
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 0);
    coll.insert_many((0..30).map(|i| doc! { "_id": i, "group": i % 3, "size": i, "tags": if i % 2 == 0 { vec!["even"] } else { vec!["odd", "x"] } }))
        .await
        .unwrap();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 30);
    assert_eq!(coll.count_documents(doc! { "group": 1 }).await.unwrap(), 10);
    assert_eq!(
        coll.count_documents(doc! { "size": { "$gte": 10 } })
            .skip(5)
            .limit(7)
            .await
            .unwrap(),
        7
    );
    assert_eq!(coll.estimated_document_count().await.unwrap(), 30);

    let mut tags: Vec<String> = coll
        .distinct("tags", doc! {})
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect();
    tags.sort();
    assert_eq!(tags, ["even", "odd", "x"]);

    let out: Vec<Document> = coll
        .aggregate(vec![
            doc! { "$match": { "size": { "$lt": 12 } } },
            doc! { "$group": { "_id": "$group", "total": { "$sum": "$size" }, "count": { "$sum": 1 } } },
            doc! { "$sort": { "total": -1 } },
            doc! { "$project": { "_id": 0, "g": "$_id", "total": 1 } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            doc! { "total": 26, "g": 2 },
            doc! { "total": 22, "g": 1 },
            doc! { "total": 18, "g": 0 }
        ]
    );
    let err = coll
        .aggregate(vec![doc! { "$lookup": {} }])
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(40324));
}

#[tokio::test]
async fn projection_and_mixed_numeric_sort() {
    let (_server, client) = setup().await;
    let coll = client.database("app").collection::<Document>("nums");
    coll.insert_many(vec![
        doc! { "_id": 1, "v": 10i64, "name": "ten", "extra": { "a": 1, "b": 2 } },
        doc! { "_id": 2, "v": 2.5, "name": "two and a half", "extra": { "a": 3, "b": 4 } },
        doc! { "_id": 3, "v": 3, "name": "three" },
        doc! { "_id": 4, "v": -1.0, "name": "minus one" },
        doc! { "_id": 5, "name": "missing" },
        doc! { "_id": 6, "v": "text", "name": "string" },
        doc! { "_id": 7, "v": 9_007_199_254_740_993i64, "name": "big" },
    ])
    .await
    .unwrap();

    let order: Vec<i32> = coll
        .find(doc! {})
        .sort(doc! { "v": 1 })
        .projection(doc! { "_id": 1 })
        .await
        .unwrap()
        .map_ok(|d| {
            assert_eq!(d.len(), 1);
            d.get_i32("_id").unwrap()
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(order, [5, 4, 2, 3, 1, 7, 6]);

    let numeric: Vec<i32> = coll
        .find(doc! { "v": { "$gt": 2, "$lte": 10.0 } })
        .sort(doc! { "v": -1, "_id": 1 })
        .await
        .unwrap()
        .map_ok(|d| d.get_i32("_id").unwrap())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(numeric, [1, 3, 2]);

    let projected = coll
        .find_one(doc! { "_id": 1 })
        .projection(doc! { "name": 1, "extra.b": 1, "_id": 0 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(projected, doc! { "name": "ten", "extra": { "b": 2 } });
    let excluded = coll
        .find_one(doc! { "_id": 2 })
        .projection(doc! { "extra": 0, "name": 0 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(excluded, doc! { "_id": 2, "v": 2.5 });
    let err = coll
        .find_one(doc! {})
        .projection(doc! { "name": 1, "v": 0 })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(31254));
}

#[tokio::test]
async fn databases_collections_and_errors() {
    let (_server, client) = setup().await;
    let db = client.database("meta");
    db.create_collection("one").await.unwrap();
    let err = db.create_collection("one").await.unwrap_err();
    assert_eq!(error_code(&err), Some(48));
    db.collection::<Document>("two")
        .insert_one(doc! { "_id": ObjectId::new() })
        .await
        .unwrap();
    assert_eq!(db.list_collection_names().await.unwrap(), ["one", "two"]);
    assert!(
        client
            .list_database_names()
            .await
            .unwrap()
            .contains(&"meta".to_owned())
    );

    db.collection::<Document>("one").drop().await.unwrap();
    db.collection::<Document>("never").drop().await.unwrap();
    assert_eq!(db.list_collection_names().await.unwrap(), ["two"]);
    db.drop().await.unwrap();
    assert!(
        !client
            .list_database_names()
            .await
            .unwrap()
            .contains(&"meta".to_owned())
    );

    let err = db.run_command(doc! { "frobnicate": 1 }).await.unwrap_err();
    match err.kind.as_ref() {
        mongodb::error::ErrorKind::Command(e) => {
            assert_eq!(e.code, 59);
            assert_eq!(e.code_name, "CommandNotFound");
            assert_eq!(e.message, "no such command: 'frobnicate'");
        }
        other => panic!("unexpected error {other:?}"),
    }
    let err = db
        .collection::<Document>("c")
        .find_one(doc! { "a": { "$regex": "x" } })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(2));
    let err = db
        .collection::<Document>("missing")
        .list_indexes()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(26));

    let info = client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await
        .unwrap();
    assert_eq!(info.get_str("version").unwrap(), "7.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_share_one_store() {
    let (server, _client) = setup().await;
    let url = server.url();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // Separate clients, so separate connections.
            let client = mongodb::Client::with_uri_str(&url).await.unwrap();
            let coll = client.database("app").collection::<Document>("shared");
            for i in 0..40 {
                coll.insert_one(doc! { "worker": worker, "i": i, "slot": i % 10 })
                    .await
                    .unwrap();
                // Everyone races to upsert the same ten counters.
                coll.update_one(
                    doc! { "_id": format!("counter-{}", i % 10) },
                    doc! { "$inc": { "n": 1 } },
                )
                .upsert(true)
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    let coll = client.database("app").collection::<Document>("shared");
    assert_eq!(
        coll.count_documents(doc! { "worker": { "$exists": true } })
            .await
            .unwrap(),
        320
    );
    let counters: Vec<Document> = coll
        .find(doc! { "n": { "$exists": true } })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(counters.len(), 10);
    assert!(
        counters.iter().all(|c| c.get_i32("n").unwrap() == 32),
        "{counters:?}"
    );
}
