//! Wall-clock time as the platform stores it: milliseconds since the Unix
//! epoch (blob `uploaded_at`, dead-letter times, queue visibility).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for a clock before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2024() {
        assert!(super::now_ms() > 1_704_067_200_000);
    }
}
