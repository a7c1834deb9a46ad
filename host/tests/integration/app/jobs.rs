//! `GET /jobs` (the caller's jobs, newest first, a page at a time) and
//! `DELETE /jobs/{id}` (the video and the MP3 go, 404 after), with the
//! fields the web page shows (`filename`, `size_bytes`, `progress`,
//! `duration_secs`), on embedded defaults.

use super::{Client, probe};
use crate::support::{self, UpOptions, expect_json_error, unique, up};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

impl Client {
    async fn list(&self, token: &str, query: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/jobs{query}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn page(&self, token: &str, query: &str) -> Value {
        let resp = self.list(token, query).await;
        assert_eq!(resp.status(), 200, "GET /jobs{query}");
        resp.json().await.unwrap()
    }

    async fn delete(&self, token: &str, job_id: &str) -> reqwest::Response {
        self.http
            .delete(format!("{}/jobs/{job_id}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_string())
        .collect()
}

/// The JSON descriptions in `bucket` of the embedded blob store whose text
/// names `needle`.
fn stored_naming(state_dir: &Path, bucket: &str, needle: &str) -> usize {
    std::fs::read_dir(state_dir.join("blobs").join(bucket))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter(|e| {
                    std::fs::read_to_string(e.path()).is_ok_and(|text| text.contains(needle))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_listed_newest_first_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let video = support::make_video(dir.path(), "first.mp4", 6);
    let spindle = up(UpOptions::new(&manifest));
    let client = Client::new(&spindle);
    let token = client
        .account(&format!("{}@example.com", unique("lister")))
        .await;
    let other = client
        .account(&format!("{}@example.com", unique("neighbour")))
        .await;

    let empty = client.page(&token, "").await;
    assert_eq!(empty, serde_json::json!({"jobs": [], "next": null}));

    let bytes = std::fs::read(&video).unwrap();
    let first = client.upload(&token, "first.mp4", bytes.clone()).await;
    let second = client
        .upload(&token, "second.mp4", b"not a video\n".repeat(50))
        .await;
    let third = client
        .upload(&token, "third.mp4", b"nor this\n".repeat(50))
        .await;
    let theirs = client.upload(&other, "theirs.mp4", bytes.clone()).await;
    let id = |v: &Value| v["job_id"].as_str().unwrap().to_string();

    // Newest first, two at a time, only the caller's.
    let page = client.page(&token, "?limit=2").await;
    assert_eq!(ids(&page), [id(&third), id(&second)]);
    let next = page["next"].as_str().expect("a cursor to the next page");
    let page = client.page(&token, &format!("?limit=2&after={next}")).await;
    assert_eq!(ids(&page), [id(&first)]);
    assert!(page["next"].is_null(), "{page}");
    let all = client.page(&token, "").await;
    assert_eq!(ids(&all), [id(&third), id(&second), id(&first)]);
    assert!(!ids(&all).contains(&id(&theirs)));
    assert_eq!(ids(&client.page(&other, "").await), [id(&theirs)]);

    // What the page shows of each job.
    let listed = &all["jobs"][2];
    assert_eq!(listed["filename"], "first.mp4");
    assert_eq!(listed["size_bytes"], bytes.len());
    assert_eq!(listed["video_fid"], first["video_fid"]);
    assert!(listed["uploaded_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(listed["progress"].as_u64().unwrap() <= 100);

    // Once done: 100 percent, the media's length, and the size the upload
    // had although its bytes are dropped; the listing says the same.
    let done = client.finished_job(&token, &id(&first)).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["progress"], 100);
    let (_, secs) = probe(&video);
    let duration = done["duration_secs"].as_f64().expect("duration_secs");
    assert!((duration - secs).abs() < 0.5, "{duration} vs {secs}");
    assert_eq!(done["size_bytes"], bytes.len());
    let failed = client.finished_job(&token, &id(&second)).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()));
    let all = client.page(&token, "").await;
    assert_eq!(all["jobs"][2], done, "the list and the job agree");

    // Malformed pages and no token.
    for bad in [
        "?limit=0",
        "?limit=101",
        "?limit=ten",
        "?after=garbage",
        "?after=bm9wZQ",
    ] {
        let msg = expect_json_error(client.list(&token, bad).await, 400).await;
        assert!(
            msg.contains("limit") || msg.contains("cursor"),
            "{bad}: {msg}"
        );
    }
    let resp = client
        .http
        .get(format!("{}/jobs", client.url))
        .send()
        .await
        .unwrap();
    expect_json_error(resp, 401).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_job_and_its_files_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let video = support::make_video(dir.path(), "clip.mp4", 6);
    let spindle = up(UpOptions::new(&manifest));
    let client = Client::new(&spindle);
    let token = client
        .account(&format!("{}@example.com", unique("deleter")))
        .await;
    let other = client
        .account(&format!("{}@example.com", unique("stranger")))
        .await;
    let bytes = std::fs::read(&video).unwrap();

    let upload = client.upload(&token, "clip.mp4", bytes.clone()).await;
    let job_id = upload["job_id"].as_str().unwrap().to_string();
    let done = client.finished_job(&token, &job_id).await;
    let mp3_fid = done["mp3_fid"].as_str().unwrap().to_string();
    let video_fid = done["video_fid"].as_str().unwrap().to_string();
    let blobs = spindle.state_dir.join("blobs");
    assert!(blobs.join("mp3s").join(format!("{mp3_fid}.data")).exists());

    // Someone else's job is not found, and stays.
    expect_json_error(client.delete(&other, &job_id).await, 404).await;
    expect_json_error(client.delete(&token, "not-a-job").await, 404).await;
    assert_eq!(client.job(&token, &job_id).await.status(), 200);

    let resp = client.delete(&token, &job_id).await;
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    expect_json_error(client.job(&token, &job_id).await, 404).await;
    expect_json_error(client.delete(&token, &job_id).await, 404).await;
    expect_json_error(client.download(&token, &mp3_fid, None).await, 404).await;
    assert!(ids(&client.page(&token, "").await).is_empty());
    for (bucket, fid) in [("videos", &video_fid), ("mp3s", &mp3_fid)] {
        for ext in ["json", "data"] {
            let file = blobs.join(bucket).join(format!("{fid}.{ext}"));
            assert!(!file.exists(), "{} is gone", file.display());
        }
    }

    // A job deleted at once, while queued or converting: no MP3 is left
    // behind, whenever the worker gets to it.
    let upload = client.upload(&token, "soon.mp4", bytes).await;
    let soon = upload["job_id"].as_str().unwrap().to_string();
    assert_eq!(client.delete(&token, &soon).await.status(), 204);
    expect_json_error(client.job(&token, &soon).await, 404).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stored_naming(&spindle.state_dir, "mp3s", &soon), 0);
    assert_eq!(stored_naming(&spindle.state_dir, "videos", &soon), 0);
    expect_json_error(client.job(&token, &soon).await, 404).await;
}
