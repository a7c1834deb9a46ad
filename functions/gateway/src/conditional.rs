//! Validators and conditional requests for `/download` (RFC 9110 §8.8, §13).
//!
//! An MP3 never changes once stored (a new conversion gets a new fid), so the
//! fid is a strong entity tag and the upload time its `Last-Modified`. With
//! them a resumed download can send `If-Range` and get only the missing bytes
//! when the file is the same one, and a player's cache can revalidate with
//! `If-None-Match` and get `304` without the body.

use std::time::{Duration, UNIX_EPOCH};

/// The validators of one stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// The strong entity tag, quotes included.
    pub etag: String,
    /// `Last-Modified` as an IMF-fixdate.
    pub last_modified: String,
}

impl Validators {
    /// Validators for the file `fid`, uploaded at `uploaded_at_ms` (ms since
    /// the Unix epoch).
    pub fn new(fid: &str, uploaded_at_ms: u64) -> Self {
        // HTTP dates have whole seconds; truncate so a client echoing the
        // header back compares equal.
        let at = UNIX_EPOCH + Duration::from_secs(uploaded_at_ms / 1000);
        Self {
            etag: format!("\"{fid}\""),
            last_modified: httpdate::fmt_http_date(at),
        }
    }

    /// Whether `If-None-Match` matches, so a GET or HEAD gets `304`. The
    /// comparison is weak (§8.8.3.2): `W/` prefixes are ignored.
    pub fn none_match_hits(&self, if_none_match: Option<&str>) -> bool {
        let Some(header) = if_none_match else {
            return false;
        };
        let opaque = self.etag.as_str();
        header
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == opaque)
    }

    /// Whether a `Range` may be honoured given `If-Range` (§13.1.5): without
    /// the header, always; with an entity tag, only on a strong match; with a
    /// date, only when it equals `Last-Modified`. Anything else, including a
    /// weak tag or a date that does not parse, means "send the whole file".
    pub fn range_allowed(&self, if_range: Option<&str>) -> bool {
        let Some(value) = if_range.map(str::trim) else {
            return true;
        };
        if value.starts_with('"') || value.starts_with("W/") {
            return value == self.etag;
        }
        match (
            httpdate::parse_http_date(value),
            httpdate::parse_http_date(&self.last_modified),
        ) {
            (Ok(asked), Ok(ours)) => asked == ours,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FID: &str = "65a1b2c3d4e5f60718293a4b";

    fn validators() -> Validators {
        // 2024-01-12T20:37:15.123Z
        Validators::new(FID, 1_705_091_835_123)
    }

    #[test]
    fn the_fid_is_the_entity_tag_and_the_upload_time_last_modified() {
        let v = validators();
        assert_eq!(v.etag, format!("\"{FID}\""));
        assert_eq!(v.last_modified, "Fri, 12 Jan 2024 20:37:15 GMT");
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let v = validators();
        assert!(!v.none_match_hits(None));
        assert!(v.none_match_hits(Some(&v.etag)));
        assert!(v.none_match_hits(Some(&format!("W/{}", v.etag))));
        assert!(v.none_match_hits(Some(&format!("\"other\", {}", v.etag))));
        assert!(v.none_match_hits(Some("*")));
        assert!(!v.none_match_hits(Some("\"other\"")));
        assert!(
            !v.none_match_hits(Some(FID)),
            "an unquoted tag is not a tag"
        );
    }

    #[test]
    fn if_range_needs_a_strong_match_or_the_exact_date() {
        let v = validators();
        assert!(v.range_allowed(None));
        assert!(v.range_allowed(Some(&v.etag)));
        assert!(!v.range_allowed(Some(&format!("W/{}", v.etag))));
        assert!(!v.range_allowed(Some("\"65a1b2c3d4e5f60718293a4c\"")));
        assert!(v.range_allowed(Some("Fri, 12 Jan 2024 20:37:15 GMT")));
        assert!(!v.range_allowed(Some("Fri, 12 Jan 2024 20:37:16 GMT")));
        assert!(!v.range_allowed(Some("yesterday")));
    }
}
