//! Running ffmpeg: the start-up check, one conversion with a time limit,
//! and turning ffmpeg's stderr into a reason a user can act on.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;

/// How much of ffmpeg's stderr is kept for the error message.
const STDERR_TAIL: usize = 4096;

/// ffmpeg's arguments between the input and the output: the first audio
/// stream as MP3 at a constant 192 kbit/s (a piped VBR MP3 has no seek
/// header, so players misjudge its length). Public so the benchmark times
/// ffmpeg alone on exactly this conversion.
pub const MP3_OUTPUT_ARGS: [&str; 9] = [
    "-map",
    "0:a:0",
    "-vn",
    "-c:a",
    "libmp3lame",
    "-b:a",
    "192k",
    "-f",
    "mp3",
];
/// MP3 bytes handed to the blob store at once.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    /// ffmpeg cannot be run at all: the worker cannot work.
    #[error(
        "ffmpeg was not found or cannot run (`{path}`: {reason}); install ffmpeg (e.g. `apt install ffmpeg`) or set `ffmpeg = \"/path/to/ffmpeg\"` under [convert] in the runtime config"
    )]
    Missing { path: String, reason: String },
    /// This ffmpeg has no MP3 encoder.
    #[error(
        "`{path}` has no libmp3lame encoder, so it cannot make MP3s; install an ffmpeg built with libmp3lame (Debian's `ffmpeg` package has it)"
    )]
    NoMp3Encoder { path: String },
}

/// Why one conversion did not produce an MP3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The input cannot be converted: retrying will not help.
    Unconvertible(String),
    /// ffmpeg could not be started or its output was lost: worth a retry.
    Transient(String),
}

#[derive(Debug, Clone)]
pub struct Ffmpeg {
    path: PathBuf,
    time_limit: Duration,
}

impl Ffmpeg {
    /// Checks that `path` runs and can encode MP3; returns ffmpeg and its
    /// version line.
    pub async fn check(path: &Path, time_limit: Duration) -> Result<(Self, String), FfmpegError> {
        let shown = path.display().to_string();
        let output = Command::new(path)
            .args(["-hide_banner", "-encoders"])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| FfmpegError::Missing {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(FfmpegError::Missing {
                path: shown,
                reason: format!("`-encoders` exited with {}", output.status),
            });
        }
        if !String::from_utf8_lossy(&output.stdout).contains("libmp3lame") {
            return Err(FfmpegError::NoMp3Encoder { path: shown });
        }
        let version = Command::new(path)
            .arg("-version")
            .stdin(Stdio::null())
            .output()
            .await
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        Ok((
            Ffmpeg {
                path: path.to_path_buf(),
                time_limit,
            },
            version,
        ))
    }

    /// Converts the audio of `input` to MP3 ([`MP3_OUTPUT_ARGS`]), sending
    /// the bytes to `out` as ffmpeg writes them. `name` stands for
    /// the input in error messages. The child is killed if this future is
    /// dropped (shutdown) or the time limit passes.
    pub async fn to_mp3(
        &self,
        input: &Path,
        name: &str,
        out: mpsc::Sender<Bytes>,
    ) -> Result<(), Failure> {
        let mut child = Command::new(&self.path)
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
            .arg(input)
            .args(MP3_OUTPUT_ARGS)
            .arg("pipe:1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure::Transient(format!("cannot start ffmpeg: {e}")))?;
        let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Failure::Transient(
                "ffmpeg's output pipes are missing".into(),
            ));
        };
        let pump = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = stdout.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<bool, std::io::Error>(true);
                }
                if out.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    // The blob store stopped taking data; its error wins.
                    return Ok(false);
                }
            }
        };
        let run = async {
            let (pumped, tail, status) = tokio::join!(pump, read_tail(stderr), child.wait());
            (pumped, tail, status)
        };
        let (pumped, tail, status) = match tokio::time::timeout(self.time_limit, run).await {
            Ok(done) => done,
            Err(_) => {
                let _ = child.kill().await;
                return Err(Failure::Unconvertible(format!(
                    "the conversion took longer than the limit of {} s",
                    self.time_limit.as_secs()
                )));
            }
        };
        let status = status.map_err(|e| Failure::Transient(format!("waiting for ffmpeg: {e}")))?;
        if !status.success() {
            let tail = tail.replace(&input.display().to_string(), name);
            return Err(match status.code() {
                Some(_) => Failure::Unconvertible(explain(&tail)),
                None => Failure::Transient(format!("ffmpeg was killed ({status})")),
            });
        }
        match pumped {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Transient("the MP3 could not be stored".into())),
            Err(e) => Err(Failure::Transient(format!("reading ffmpeg's output: {e}"))),
        }
    }
}

/// The last [`STDERR_TAIL`] bytes of ffmpeg's stderr.
async fn read_tail(mut stderr: impl AsyncRead + Unpin) -> String {
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// A sentence for the job's `error`, from what ffmpeg printed.
pub fn explain(stderr: &str) -> String {
    let known = [
        (
            "Invalid data found when processing input",
            "the upload is not a video or audio file that can be read",
        ),
        (
            "matches no streams",
            "the video has no audio track, so there is nothing to convert to MP3",
        ),
        (
            "does not contain any stream",
            "the video has no audio track, so there is nothing to convert to MP3",
        ),
        (
            "moov atom not found",
            "the video file is incomplete or damaged (its index is missing)",
        ),
        (
            "End of file",
            "the video file ends too early; it may be cut short",
        ),
    ];
    let detail = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no details");
    match known.iter().find(|(needle, _)| stderr.contains(needle)) {
        Some((_, sentence)) => format!("conversion failed: {sentence} (ffmpeg: {detail})"),
        None => format!("conversion failed: ffmpeg could not convert this file (ffmpeg: {detail})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ffmpeg_errors_read_as_sentences() {
        let e = explain("notes.txt: Invalid data found when processing input\n");
        assert!(
            e.starts_with("conversion failed: the upload is not a video"),
            "{e}"
        );
        assert!(e.contains("notes.txt"), "{e}");
        let e = explain(
            "Stream map '0:a:0' matches no streams.\nTo ignore this, add a trailing '?' to the map.\n",
        );
        assert!(e.contains("no audio track"), "{e}");
        let e = explain("something odd\n\n");
        assert_eq!(
            e,
            "conversion failed: ffmpeg could not convert this file (ffmpeg: something odd)"
        );
        assert!(explain("").contains("no details"));
    }

    #[tokio::test]
    async fn a_missing_ffmpeg_is_reported_plainly() {
        let e = Ffmpeg::check(Path::new("/nonexistent/ffmpeg"), Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ffmpeg was not found") && e.contains("/nonexistent/ffmpeg"),
            "{e}"
        );
    }
}
