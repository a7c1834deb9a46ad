//! GridFS through the official driver on the in-process MongoDB wire
//! server: every shared behaviour, and the metadata index `find` creates.

use super::*;

every_behaviour!(Backend::gridfs);

#[tokio::test]
async fn gridfs_find_creates_its_metadata_index() {
    let server = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let store = BlobStore::connect(Some(&server.url()), Path::new("/nonexistent"))
        .await
        .unwrap();
    let job = queued_job(&store, "videos").await;
    let job_id = metadata_of(&job)["job_id"].clone();
    for _ in 0..2 {
        let found = store.find("videos", "job_id", &job_id).await.unwrap();
        assert_eq!(found.len(), 1);
    }
    let client = mongodb::Client::with_uri_str(server.url()).await.unwrap();
    let names: Vec<String> = client
        .database("videos")
        .collection::<mongodb::bson::Document>("fs.files")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        names.contains(&"metadata.job_id_1".to_string()),
        "{names:?}"
    );
}
