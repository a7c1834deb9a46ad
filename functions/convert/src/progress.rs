//! How far a conversion has got, as the job's `progress` (0–100) and
//! `duration_secs` metadata.
//!
//! ffmpeg reports its own progress (`-progress pipe:2`): blocks of
//! `key=value` lines on stderr, among them `out_time_us`, the media time
//! written so far. Against the duration ffprobe found, that is the percent
//! done. The job loop writes it to the video's metadata at most once per
//! [`REPORT_EVERY`], under the claim's compare-and-set, so a report never
//! overwrites another delivery's claim or the job's final state.

use std::time::Duration;

/// How often progress is written to the job at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The metadata keys progress is kept in.
pub const PROGRESS: &str = "progress";
pub const DURATION_SECS: &str = "duration_secs";

/// What is known of a running conversion.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// The media's length in seconds, once ffprobe has read it (if the
    /// container says).
    pub duration_secs: Option<f64>,
    /// Media time ffmpeg has written.
    pub out_time: Duration,
}

impl Progress {
    /// Percent done while converting: capped at 99, since 100 means the
    /// MP3 is stored; 0 while the duration is unknown.
    pub fn percent(&self) -> u8 {
        match self.duration_secs {
            Some(total) if total > 0.0 => {
                let done = (self.out_time.as_secs_f64() / total * 100.0).floor();
                done.clamp(0.0, 99.0) as u8
            }
            _ => 0,
        }
    }

    /// The metadata pairs this progress is recorded as.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = vec![(PROGRESS.to_string(), self.percent().to_string())];
        if let Some(secs) = self.duration_secs {
            pairs.push((DURATION_SECS.to_string(), format_secs(secs)));
        }
        pairs
    }
}

/// Seconds as stored in metadata: milliseconds are plenty.
pub fn format_secs(secs: f64) -> String {
    format!("{secs:.3}")
}

/// One line of ffmpeg's stderr, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// `out_time_us=N`: this much media is written.
    OutTime(Duration),
    /// Any other `key=value` line of a progress block.
    Progress,
    /// Anything else: a log line, kept for the error message.
    Log(&'a str),
}

/// Sorts a line of ffmpeg's stderr, where `-progress pipe:2` interleaves
/// its `key=value` blocks with error messages. A progress key is lowercase
/// letters, digits and underscores (`out_time_us`, `stream_0_0_q`); a log
/// line never has that shape before its first `=`.
pub fn classify(line: &str) -> Line<'_> {
    let Some((key, value)) = line.split_once('=') else {
        return Line::Log(line);
    };
    let is_key = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !is_key {
        return Line::Log(line);
    }
    if key == "out_time_us" {
        // "N/A" before the first frame; negative at the start of some files.
        if let Ok(us) = value.trim().parse::<u64>() {
            return Line::OutTime(Duration::from_micros(us));
        }
    }
    Line::Progress
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffmpeg_progress_lines_are_told_from_log_lines() {
        assert_eq!(
            classify("out_time_us=20010862"),
            Line::OutTime(Duration::from_micros(20_010_862))
        );
        assert_eq!(classify("out_time_us=N/A"), Line::Progress);
        assert_eq!(classify("out_time_us=-23220"), Line::Progress);
        assert_eq!(classify("progress=continue"), Line::Progress);
        assert_eq!(classify("bitrate= 192.3kbits/s"), Line::Progress);
        assert_eq!(classify("stream_0_0_q=23.0"), Line::Progress);
        let log = "clip.mp4: Invalid data found when processing input";
        assert_eq!(classify(log), Line::Log(log));
        let log = "[mp3 @ 0x55] Option key=value not found";
        assert_eq!(classify(log), Line::Log(log));
        assert_eq!(classify("=x"), Line::Log("=x"));
    }

    #[test]
    fn percent_is_capped_below_done_and_zero_without_a_duration() {
        let mut p = Progress {
            duration_secs: Some(20.0),
            out_time: Duration::from_secs(5),
        };
        assert_eq!(p.percent(), 25);
        p.out_time = Duration::from_secs(25);
        assert_eq!(p.percent(), 99);
        p.duration_secs = None;
        assert_eq!(p.percent(), 0);
        assert_eq!(p.pairs(), vec![("progress".into(), "0".into())]);
        p.duration_secs = Some(12.0416);
        p.out_time = Duration::from_secs(6);
        assert_eq!(
            p.pairs(),
            vec![
                ("progress".into(), "49".into()),
                ("duration_secs".into(), "12.042".into())
            ]
        );
    }
}
