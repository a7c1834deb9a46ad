//! Running ffmpeg: the start-up check, probing an upload before it is
//! converted, one conversion inside its limits, and turning ffmpeg's stderr
//! into a reason a user can act on.
//!
//! Anyone who signs up can upload, so the input is hostile until shown
//! otherwise. ffprobe reads it first: longer than `max_duration_secs` or
//! without an audio stream, it fails at once. ffmpeg and ffprobe then only
//! open the spooled file (`-protocol_whitelist file`) through a demuxer of
//! a media container (`-format_whitelist`: no playlists, `concat` or image
//! sequences), ffmpeg stops at the probed duration (`-t`) and at the size
//! that duration allows (`-fs`), runs a bounded number of threads, and both
//! run in the [`Sandbox`] (no network, no files but the upload, rlimits).
//! Error texts name the upload by its file name, never a path. ffmpeg's
//! own progress report shares stderr with its errors and is sorted out of
//! it line by line (`progress.rs`).

use crate::progress::{Line, Progress, classify};
use crate::sandbox::{Rlimits, Sandbox};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

/// How much of ffmpeg's stderr is kept for the error message.
const STDERR_TAIL: usize = 4096;

/// The longest stderr line read whole; the rest of a longer one is dropped.
const MAX_LINE: usize = 4096;

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

/// The demuxers an upload may be read with: media containers and raw audio
/// streams. Playlists (hls, dash), `concat`, image sequences and devices
/// are absent, so an upload cannot make ffmpeg open anything but itself.
const FORMATS: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,ogg,wav,w64,flac,mp3,aac,ac3,eac3,asf,aiff,caf,amr,ape,wv,tta,au,mxf,nut,rm,dv";

/// The only protocol an upload may be opened with.
const PROTOCOLS: &str = "file";

/// Bytes per second of the MP3 (192 kbit/s), for the output size bound.
const MP3_BYTES_PER_SEC: u64 = 192_000 / 8;

/// Threads ffmpeg may use for decoding, filtering and encoding each.
const THREADS: &str = "2";

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

/// What a conversion may use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time of one conversion.
    pub time_limit: Duration,
    /// The longest media converted.
    pub max_duration: Duration,
    /// ffmpeg's address space.
    pub memory_bytes: u64,
}

/// What ffprobe found in an upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    /// Seconds, when the container says.
    pub duration: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Ffmpeg {
    path: PathBuf,
    ffprobe: PathBuf,
    limits: Limits,
    sandbox: Sandbox,
}

impl Ffmpeg {
    /// Checks that `path` and `ffprobe` run and that ffmpeg can encode
    /// MP3; returns ffmpeg and its version line.
    pub async fn check(
        path: &Path,
        ffprobe: &Path,
        limits: Limits,
    ) -> Result<(Self, String), FfmpegError> {
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
        let probe = Command::new(ffprobe)
            .arg("-version")
            .stdin(Stdio::null())
            .output()
            .await;
        if let Err(e) = probe {
            return Err(FfmpegError::Missing {
                path: ffprobe.display().to_string(),
                reason: e.to_string(),
            });
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
        let sandbox = Sandbox::detect(&[path, ffprobe]).await;
        Ok((
            Ffmpeg {
                path: path.to_path_buf(),
                ffprobe: ffprobe.to_path_buf(),
                limits,
                sandbox,
            },
            version,
        ))
    }

    /// Which protections the children run under.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Boxes `command`, which reads `input` (see [`Sandbox`]); the CPU
    /// limit is twice the wall-clock one, for ffmpeg's threads.
    fn confine(&self, command: &mut Command, input: &Path) -> Result<(), Failure> {
        let limits = Rlimits {
            cpu_secs: self.limits.time_limit.as_secs().saturating_mul(2).max(1),
            address_space: self.limits.memory_bytes,
        };
        self.sandbox
            .confine(command, Some(input), limits)
            .map_err(|e| Failure::Transient(format!("cannot prepare ffmpeg's sandbox: {e}")))
    }

    /// Reads `input`'s container with ffprobe (restricted like ffmpeg) and
    /// refuses what is not worth converting: no audio stream, or longer
    /// than the limit. `name` stands for the input in error messages.
    pub async fn probe(&self, input: &Path, name: &str) -> Result<Media, Failure> {
        let mut command = Command::new(&self.ffprobe);
        command
            .args(["-hide_banner", "-v", "error"])
            .args(restricted_input())
            .args(["-show_entries", "format=duration:stream=codec_type"])
            .args(["-of", "json"])
            .arg(file_url(input))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        self.confine(&mut command, input)?;
        let run = tokio::time::timeout(self.limits.time_limit, command.output());
        let output = match run.await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(Failure::Transient(format!("cannot start ffprobe: {e}"))),
            Err(_) => {
                return Err(Failure::Unconvertible(
                    "conversion failed: reading the upload's format took too long".into(),
                ));
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(Failure::Unconvertible(explain(&scrub(
                &stderr, input, name,
            ))));
        }
        let found: Probed = serde_json::from_slice(&output.stdout).map_err(|e| {
            Failure::Unconvertible(format!(
                "conversion failed: the upload's format could not be read ({e})"
            ))
        })?;
        if !found.streams.iter().any(|s| s.codec_type == "audio") {
            return Err(Failure::Unconvertible(
                "conversion failed: the upload has no audio track, so there is nothing to convert to MP3".into(),
            ));
        }
        let duration = found
            .format
            .duration
            .and_then(|d| d.parse::<f64>().ok())
            .filter(|d| d.is_finite() && *d >= 0.0);
        let max = self.limits.max_duration.as_secs_f64();
        if let Some(d) = duration
            && d > max
        {
            return Err(Failure::Unconvertible(format!(
                "conversion failed: the upload is {} long; this server converts at most {}",
                hms(d),
                hms(max)
            )));
        }
        Ok(Media { duration })
    }

    /// Converts the audio of `input` to MP3 ([`MP3_OUTPUT_ARGS`]), sending
    /// the bytes to `out` as ffmpeg writes them and the media time written
    /// to `progress` about once a second. `name` stands for the input in
    /// error messages. The child is killed if this future is dropped
    /// (shutdown, a deleted job) or the time limit passes.
    pub async fn to_mp3(
        &self,
        input: &Path,
        media: &Media,
        name: &str,
        out: mpsc::Sender<Bytes>,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), Failure> {
        let max = self.limits.max_duration.as_secs_f64();
        let seconds = media.duration.map_or(max, |d| d.min(max));
        // The MP3 of `seconds`, plus headroom for frame padding and tags.
        let max_bytes = (seconds.ceil() as u64 + 10) * MP3_BYTES_PER_SEC + (1 << 20);
        let mut command = Command::new(&self.path);
        command
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-nostats"])
            .args(["-progress", "pipe:2", "-stats_period", "1"])
            .args(restricted_input())
            .args(["-threads", THREADS, "-i"])
            .arg(file_url(input))
            .args([
                "-t",
                &format!("{seconds:.3}"),
                "-fs",
                &max_bytes.to_string(),
            ])
            .args(["-threads", THREADS, "-filter_threads", THREADS])
            .args(MP3_OUTPUT_ARGS)
            .arg("pipe:1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.confine(&mut command, input)?;
        let mut child = command
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
            let (pumped, tail, status) =
                tokio::join!(pump, read_stderr(stderr, progress), child.wait());
            (pumped, tail, status)
        };
        let (pumped, tail, status) = match tokio::time::timeout(self.limits.time_limit, run).await {
            Ok(done) => done,
            Err(_) => {
                let _ = child.kill().await;
                return Err(Failure::Unconvertible(format!(
                    "the conversion took longer than the limit of {} s",
                    self.limits.time_limit.as_secs()
                )));
            }
        };
        let status = status.map_err(|e| Failure::Transient(format!("waiting for ffmpeg: {e}")))?;
        if !status.success() {
            return Err(match status.code() {
                Some(_) => Failure::Unconvertible(explain(&scrub(&tail, input, name))),
                None => killed(status),
            });
        }
        match pumped {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Transient("the MP3 could not be stored".into())),
            Err(e) => Err(Failure::Transient(format!("reading ffmpeg's output: {e}"))),
        }
    }
}

/// ffprobe's JSON, the parts read.
#[derive(serde::Deserialize)]
struct Probed {
    #[serde(default)]
    streams: Vec<ProbedStream>,
    #[serde(default)]
    format: ProbedFormat,
}

#[derive(serde::Deserialize)]
struct ProbedStream {
    #[serde(default)]
    codec_type: String,
}

#[derive(Default, serde::Deserialize)]
struct ProbedFormat {
    duration: Option<String>,
}

/// Input options that keep ffmpeg and ffprobe to the spooled file and to
/// media demuxers.
fn restricted_input() -> [&'static str; 4] {
    [
        "-protocol_whitelist",
        PROTOCOLS,
        "-format_whitelist",
        FORMATS,
    ]
}

/// `file:PATH`, so a spool name can never be read as another protocol.
fn file_url(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// A child ended by a signal: the kernel's limits (SIGXCPU for CPU time,
/// SIGKILL past it, SIGSEGV/SIGABRT when the address space runs out) mean
/// the upload costs more than it may; anything else is worth a retry.
fn killed(status: std::process::ExitStatus) -> Failure {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGXCPU | libc::SIGKILL | libc::SIGSEGV | libc::SIGABRT | libc::SIGXFSZ) => {
            Failure::Unconvertible(
                "conversion failed: converting this file needs more CPU time or memory than this server allows".into(),
            )
        }
        _ => Failure::Transient(format!("ffmpeg was killed ({status})")),
    }
}

/// `text` with the spooled file named `name` and any other absolute path
/// replaced, so messages shown to users reveal nothing of the host.
fn scrub(text: &str, input: &Path, name: &str) -> String {
    let spool = input.display().to_string();
    let named = text
        .replace(&format!("file:{spool}"), name)
        .replace(&spool, name);
    named
        .split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_start_matches(['\'', '"', '(', '[']);
            if trimmed.starts_with('/') || trimmed.starts_with("file:/") {
                let kept: String = word.chars().filter(|c| c.is_whitespace()).collect();
                format!("[path]{kept}")
            } else {
                word.to_string()
            }
        })
        .collect()
}

/// Seconds as `1 h 2 min 3 s`.
fn hms(seconds: f64) -> String {
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m} min {s} s"),
        _ => format!("{h} h {m} min {s} s"),
    }
}

/// Reads ffmpeg's stderr to its end: progress lines update `progress`,
/// the last [`STDERR_TAIL`] bytes of the others are returned for the error
/// message.
async fn read_stderr(
    mut stderr: impl AsyncRead + Unpin,
    progress: &watch::Sender<Progress>,
) -> String {
    let mut tail = String::new();
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    let take = |line: &[u8], tail: &mut String| {
        let text = String::from_utf8_lossy(line);
        match classify(text.trim_end_matches('\r')) {
            Line::OutTime(t) => progress.send_modify(|p| p.out_time = t),
            Line::Progress => {}
            Line::Log(text) => {
                tail.push_str(text);
                tail.push('\n');
                if tail.len() > STDERR_TAIL {
                    let mut cut = tail.len() - STDERR_TAIL;
                    while !tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    tail.drain(..cut);
                }
            }
        }
    };
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for piece in buf[..n].split_inclusive(|b| *b == b'\n') {
            let room = MAX_LINE.saturating_sub(line.len());
            match piece.strip_suffix(b"\n") {
                Some(end) => {
                    line.extend_from_slice(&end[..end.len().min(room)]);
                    take(&line, &mut tail);
                    line.clear();
                }
                None => line.extend_from_slice(&piece[..piece.len().min(room)]),
            }
        }
    }
    if !line.is_empty() {
        take(&line, &mut tail);
    }
    tail
}

/// A sentence for the job's `error`, from what ffmpeg printed.
pub fn explain(stderr: &str) -> String {
    let known = [
        (
            "on whitelist",
            "the upload refers to other files or addresses (a playlist?), which this server does not open",
        ),
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

    #[test]
    fn messages_carry_no_host_paths() {
        let input = Path::new("/var/tmp/spindle-convert-abc");
        let e = scrub(
            "file:/var/tmp/spindle-convert-abc: Invalid data\nOpening '/etc/passwd' failed\n",
            input,
            "clip.mp4",
        );
        assert_eq!(e, "clip.mp4: Invalid data\nOpening [path] failed\n");
        assert_eq!(hms(36000.0), "10 h 0 min 0 s");
        assert_eq!(hms(75.4), "1 min 15 s");
    }

    #[tokio::test]
    async fn progress_is_sorted_out_of_the_error_text() {
        let stderr: &[u8] = b"out_time_us=0\nprogress=continue\n\
            clip.mp4: Invalid data\r\nout_time_us=1500000\nprogress=end\nlast words";
        let (progress, seen) = watch::channel(Progress::default());
        let tail = read_stderr(stderr, &progress).await;
        assert_eq!(tail, "clip.mp4: Invalid data\nlast words\n");
        assert_eq!(seen.borrow().out_time, Duration::from_millis(1500));

        let long = format!("{}\nend\n", "x".repeat(3 * MAX_LINE));
        let tail = read_stderr(long.as_bytes(), &progress).await;
        assert_eq!(tail.len(), STDERR_TAIL, "lines are cut at MAX_LINE");
        assert!(tail.ends_with("x\nend\n"));
    }

    #[tokio::test]
    async fn a_missing_ffmpeg_is_reported_plainly() {
        let limits = Limits {
            time_limit: Duration::from_secs(1),
            max_duration: Duration::from_secs(1),
            memory_bytes: 1 << 30,
        };
        let e = Ffmpeg::check(
            Path::new("/nonexistent/ffmpeg"),
            Path::new("ffprobe"),
            limits,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ffmpeg was not found") && e.contains("/nonexistent/ffmpeg"),
            "{e}"
        );
    }
}
