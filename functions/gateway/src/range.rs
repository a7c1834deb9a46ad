//! Pure request parsing for `/download`: the `fid` query parameter, the
//! `Range` header (RFC 9110 §14), and the `Content-Disposition` filename.
//!
//! Kept free of I/O so every edge case is unit-tested natively.

/// What to send for a `Range` header, given the file's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, or one this server ignores: answer 200 with every byte.
    Full,
    /// Answer 206 with bytes `start..=end` (both within the file).
    Partial { start: u64, end: u64 },
    /// Answer 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

impl RangeRequest {
    /// Interprets a `Range` header for a file of `len` bytes.
    ///
    /// Only a single byte range is served: `bytes=a-b`, `bytes=a-` or
    /// `bytes=-n`. A header that is malformed, uses another unit, or asks for
    /// several ranges is ignored and the whole file is sent, which RFC 9110
    /// §14.2 allows and which every client handles. A syntactically valid
    /// range that starts at or past the end (or a zero-length suffix) is
    /// unsatisfiable.
    pub fn parse(header: Option<&str>, len: u64) -> Self {
        let Some(header) = header else {
            return Self::Full;
        };
        let Some((unit, set)) = header.trim().split_once('=') else {
            return Self::Full;
        };
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return Self::Full;
        }
        // Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
        let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
        let (Some(spec), None) = (specs.next(), specs.next()) else {
            return Self::Full;
        };
        let Some((first, last)) = spec.split_once('-') else {
            return Self::Full;
        };
        let (first, last) = (first.trim(), last.trim());
        match (first.is_empty(), last.is_empty()) {
            // `bytes=-n`: the last n bytes.
            (true, false) => match digits(last) {
                Digits::Malformed => Self::Full,
                Digits::Value(0) => Self::Unsatisfiable,
                _ if len == 0 => Self::Unsatisfiable,
                Digits::Value(n) => Self::Partial {
                    start: len - n.min(len),
                    end: len - 1,
                },
                // More digits than u64 holds: more than any file, so all of it.
                Digits::Overflow => Self::Partial {
                    start: 0,
                    end: len - 1,
                },
            },
            // `bytes=a-` or `bytes=a-b`.
            (false, _) => {
                let start = match digits(first) {
                    Digits::Malformed => return Self::Full,
                    Digits::Overflow => return Self::Unsatisfiable,
                    Digits::Value(start) => start,
                };
                let end = if last.is_empty() {
                    u64::MAX
                } else {
                    match digits(last) {
                        Digits::Malformed => return Self::Full,
                        Digits::Overflow => u64::MAX,
                        Digits::Value(end) => end,
                    }
                };
                if end < start {
                    // Invalid syntax per §14.1.1, so ignored.
                    return Self::Full;
                }
                if start >= len {
                    return Self::Unsatisfiable;
                }
                Self::Partial {
                    start,
                    end: end.min(len - 1),
                }
            }
            (true, true) => Self::Full,
        }
    }
}

enum Digits {
    Value(u64),
    Overflow,
    Malformed,
}

/// A run of ASCII digits (no sign, no spaces), as RFC 9110 requires.
fn digits(s: &str) -> Digits {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Digits::Malformed;
    }
    s.parse().map_or(Digits::Overflow, Digits::Value)
}

/// Why a `fid` was refused; the message tells the client what to send.
#[derive(Debug, PartialEq, Eq)]
pub enum FidError {
    Missing,
    Malformed,
    /// Given more than once: which one is meant is ambiguous, and a proxy
    /// in front might check a different one than this function serves.
    Repeated,
}

impl std::fmt::Display for FidError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FidError::Missing => {
                "missing fid query parameter; use /download?fid=<mp3_fid from /jobs/{job_id}>"
            }
            FidError::Malformed => "fid must be 24 hexadecimal digits (the mp3_fid of a done job)",
            FidError::Repeated => "give the fid query parameter once",
        })
    }
}

/// The `fid` query parameter, checked to be a blob id (24 hex digits) and
/// lowercased, the form the blob store issues. Checking here keeps junk away
/// from the store and gives the client a 400 that says what is wrong.
pub fn parse_fid(query: Option<&str>) -> Result<String, FidError> {
    let value = crate::query::single(query, "fid")
        .map_err(|_| FidError::Repeated)?
        .ok_or(FidError::Missing)?;
    if crate::query::is_blob_id(value) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(FidError::Malformed)
    }
}

/// The `Content-Disposition` value for an MP3 converted from `source_name`
/// (the video's or the MP3's stored filename).
///
/// The download is named after the video without its extension, plus
/// `.mp3`. Directory parts are dropped. The quoted `filename` is limited to
/// printable ASCII without `"` or `\`, so a crafted upload name cannot break
/// out of the quotes or inject a header; a non-ASCII name is also given as
/// RFC 8187 `filename*`, which browsers prefer.
pub fn content_disposition(source_name: &str) -> String {
    /// Longest stem kept, in characters: plenty for a real name, and keeps
    /// the header far below any server's header limit.
    const MAX_STEM_CHARS: usize = 200;

    let base = source_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(source_name)
        .trim();
    let stem = match base.rsplit_once('.') {
        Some((stem, _ext)) if !stem.is_empty() => stem,
        _ => base,
    };
    let stem: String = stem.chars().take(MAX_STEM_CHARS).collect();
    let stem = if stem.trim().is_empty() {
        "audio".to_owned()
    } else {
        stem
    };
    let ascii: String = stem
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut value = format!("attachment; filename=\"{ascii}.mp3\"");
    if !stem.is_ascii() {
        value.push_str("; filename*=UTF-8''");
        for byte in format!("{stem}.mp3").bytes() {
            if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
                value.push(char::from(byte));
            } else {
                value.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    fn range(header: &str, len: u64) -> RangeRequest {
        RangeRequest::parse(Some(header), len)
    }

    #[test]
    fn no_header_is_full() {
        assert_eq!(RangeRequest::parse(None, 10), Full);
    }

    #[test]
    fn closed_ranges() {
        assert_eq!(range("bytes=0-0", 10), Partial { start: 0, end: 0 });
        assert_eq!(range("bytes=2-5", 10), Partial { start: 2, end: 5 });
        assert_eq!(range("bytes=0-9", 10), Partial { start: 0, end: 9 });
        // An end past the file is clamped (RFC 9110 §14.1.2).
        assert_eq!(range("bytes=5-100", 10), Partial { start: 5, end: 9 });
        assert_eq!(
            range("bytes=5-99999999999999999999999", 10),
            Partial { start: 5, end: 9 }
        );
        // Unit is case-insensitive and whitespace around the spec is allowed.
        assert_eq!(range("Bytes= 2-5 ", 10), Partial { start: 2, end: 5 });
    }

    #[test]
    fn open_ranges() {
        assert_eq!(range("bytes=3-", 10), Partial { start: 3, end: 9 });
        assert_eq!(range("bytes=9-", 10), Partial { start: 9, end: 9 });
        assert_eq!(range("bytes=0-", 1), Partial { start: 0, end: 0 });
    }

    #[test]
    fn suffix_ranges() {
        assert_eq!(range("bytes=-3", 10), Partial { start: 7, end: 9 });
        assert_eq!(range("bytes=-10", 10), Partial { start: 0, end: 9 });
        // A suffix longer than the file is the whole file.
        assert_eq!(range("bytes=-500", 10), Partial { start: 0, end: 9 });
        assert_eq!(
            range("bytes=-99999999999999999999999", 10),
            Partial { start: 0, end: 9 }
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(range("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(range("bytes=99999999999999999999999-", 10), Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), Unsatisfiable);
        // Nothing in an empty file can be selected.
        assert_eq!(range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(range("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn malformed_and_multi_ranges_are_ignored() {
        for header in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=+1-2",
            "bytes=1--2",
            "bytes=0x1-2",
            "bytes=1 2-3",
            "items=0-1",
            "bytes=0-1,2-3",
            "bytes=0-1, -2",
            "bytes=1",
        ] {
            assert_eq!(range(header, 10), Full, "{header:?}");
        }
        // Empty list elements do not make a multi-range.
        assert_eq!(range("bytes=,2-3,", 10), Partial { start: 2, end: 3 });
    }

    #[test]
    fn fid_must_be_24_hex_digits() {
        let fid = "65f0a1b2c3d4e5f6a7b8c9d0";
        assert_eq!(parse_fid(Some(&format!("fid={fid}"))), Ok(fid.to_owned()));
        assert_eq!(
            parse_fid(Some("x=1&fid=65F0A1B2C3D4E5F6A7B8C9D0")),
            Ok(fid.to_owned())
        );
        assert_eq!(parse_fid(None), Err(FidError::Missing));
        assert_eq!(parse_fid(Some("")), Err(FidError::Missing));
        assert_eq!(parse_fid(Some("fidx=1")), Err(FidError::Missing));
        assert_eq!(parse_fid(Some("fid[]=1")), Err(FidError::Missing));
        assert_eq!(
            parse_fid(Some(&format!("fid={fid}&fid={fid}"))),
            Err(FidError::Repeated)
        );
        assert_eq!(parse_fid(Some("fid=&fid=")), Err(FidError::Repeated));
        for bad in [
            "fid=",
            "fid=65f0a1b2c3d4e5f6a7b8c9d",
            "fid=65f0a1b2c3d4e5f6a7b8c9d0a",
            "fid=65f0a1b2c3d4e5f6a7b8c9dz",
            "fid=../../etc/passwd",
            "fid=65f0a1b2c3d4e5f6a7b8c9%30",
        ] {
            assert_eq!(parse_fid(Some(bad)), Err(FidError::Malformed), "{bad}");
        }
    }

    #[test]
    fn disposition_names_the_mp3_after_the_video() {
        assert_eq!(
            content_disposition("holiday.mp4"),
            r#"attachment; filename="holiday.mp3""#
        );
        assert_eq!(
            content_disposition("my.trip.mov"),
            r#"attachment; filename="my.trip.mp3""#
        );
        assert_eq!(
            content_disposition("already.mp3"),
            r#"attachment; filename="already.mp3""#
        );
        assert_eq!(
            content_disposition("noext"),
            r#"attachment; filename="noext.mp3""#
        );
        assert_eq!(
            content_disposition(".hidden"),
            r#"attachment; filename=".hidden.mp3""#
        );
        assert_eq!(
            content_disposition("C:\\fakepath\\clip.avi"),
            r#"attachment; filename="clip.mp3""#
        );
        assert_eq!(
            content_disposition("../../x/clip.avi"),
            r#"attachment; filename="clip.mp3""#
        );
        assert_eq!(
            content_disposition(""),
            r#"attachment; filename="audio.mp3""#
        );
        assert_eq!(
            content_disposition("/"),
            r#"attachment; filename="audio.mp3""#
        );
    }

    #[test]
    fn disposition_cannot_be_broken_out_of() {
        assert_eq!(
            content_disposition("a\"b\"c.mp4"),
            r#"attachment; filename="a_b_c.mp3""#
        );
        assert_eq!(
            content_disposition("evil\r\nSet-Cookie: x=1.mp4"),
            r#"attachment; filename="evil__Set-Cookie: x=1.mp3""#
        );
        let long = format!("{}.mp4", "a".repeat(1000));
        assert!(content_disposition(&long).len() < 260);
    }

    #[test]
    fn disposition_keeps_non_ascii_names_in_filename_star() {
        assert_eq!(
            content_disposition("Überfahrt.mp4"),
            "attachment; filename=\"_berfahrt.mp3\"; filename*=UTF-8''%C3%9Cberfahrt.mp3"
        );
    }
}
