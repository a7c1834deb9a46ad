//! The queue messages, with the original system's field names.

use serde::{Deserialize, Serialize};

/// `{"v":1,"job_id","video_fid","mp3_fid","username"}` on `video` (with
/// `mp3_fid: null`) and on `mp3` (with it set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub v: u32,
    pub job_id: String,
    pub video_fid: String,
    pub mp3_fid: Option<String>,
    pub username: String,
}

impl JobMessage {
    /// Parses a `video` message; the error says what is wrong with it.
    pub fn parse_video(body: &[u8]) -> Result<Self, String> {
        let msg: JobMessage = serde_json::from_slice(body)
            .map_err(|e| format!("the message is not a video job ({e})"))?;
        if msg.v != 1 {
            return Err(format!(
                "message version {} is not supported (expected 1)",
                msg.v
            ));
        }
        if msg.job_id.is_empty() || msg.video_fid.is_empty() || msg.username.is_empty() {
            return Err("job_id, video_fid and username must not be empty".into());
        }
        Ok(msg)
    }

    /// The `mp3` message announcing `mp3_fid` for this job.
    pub fn mp3_ready(&self, mp3_fid: &str) -> Vec<u8> {
        let msg = JobMessage {
            mp3_fid: Some(mp3_fid.to_string()),
            ..self.clone()
        };
        serde_json::to_vec(&msg).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_message_round_trips_to_an_mp3_message() {
        let body = br#"{"v":1,"job_id":"j1","video_fid":"0123456789abcdef01234567","mp3_fid":null,"username":"a@b.c"}"#;
        let msg = JobMessage::parse_video(body).unwrap();
        let out: serde_json::Value =
            serde_json::from_slice(&msg.mp3_ready("f".repeat(24).as_str())).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"v":1,"job_id":"j1","video_fid":"0123456789abcdef01234567","mp3_fid":"ffffffffffffffffffffffff","username":"a@b.c"})
        );
    }

    #[test]
    fn malformed_messages_are_explained() {
        assert!(
            JobMessage::parse_video(b"not json")
                .unwrap_err()
                .contains("not a video job")
        );
        let v2 = br#"{"v":2,"job_id":"j","video_fid":"f","mp3_fid":null,"username":"u"}"#;
        assert!(
            JobMessage::parse_video(v2)
                .unwrap_err()
                .contains("version 2")
        );
        let empty = br#"{"v":1,"job_id":"","video_fid":"f","mp3_fid":null,"username":"u"}"#;
        assert!(JobMessage::parse_video(empty).is_err());
    }
}
