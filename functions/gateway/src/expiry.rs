//! MP3s expire `mp3_ttl_days` after they were made (`0`, the default:
//! never). Expiry is lazy: an expired MP3 is deleted when it is next asked
//! for (`/download` answers 410) or counted against its owner's quota.

use std::time::{SystemTime, UNIX_EPOCH};

use spin_sdk::http::StatusCode;
use spin_sdk::variables;

use crate::MP3S_BUCKET;
use crate::bindings::blobs::store;
use crate::errors::ApiError;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// How long MP3s live, from `mp3_ttl_days`.
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    days: u64,
}

impl Ttl {
    pub async fn load() -> Result<Ttl, ApiError> {
        let days = match variables::get("mp3_ttl_days").await {
            Ok(raw) => raw.trim().parse().map_err(|_| {
                ApiError::internal(format!(
                    "server misconfigured: mp3_ttl_days must be a whole number of days (0: keep forever), not {raw:?}"
                ))
            })?,
            Err(variables::Error::Undefined(_)) => 0,
            Err(e) => {
                return Err(ApiError::unavailable(format!(
                    "could not read the mp3_ttl_days variable: {e}"
                )));
            }
        };
        Ok(Ttl { days })
    }

    /// Whether an MP3 made at `uploaded_at` (ms since the epoch) has expired.
    pub fn expired(&self, uploaded_at: u64) -> bool {
        self.days > 0 && uploaded_at.saturating_add(self.days.saturating_mul(DAY_MS)) <= now_ms()
    }

    /// The 410 for an expired MP3, which is deleted on the way.
    pub async fn gone(&self, mp3: &store::FileInfo) -> ApiError {
        forget(mp3).await;
        ApiError::new(
            StatusCode::GONE,
            format!(
                "this MP3 expired {} days after it was made and has been deleted; upload the video again to get a new one",
                self.days
            ),
        )
    }
}

/// Deletes an expired MP3. Best effort: a failure leaves it to the next
/// request, which finds it expired again.
pub async fn forget(mp3: &store::FileInfo) {
    if let Err(e) = store::delete(MP3S_BUCKET.to_owned(), mp3.id.clone()).await {
        eprintln!("gateway: could not delete expired MP3 {}: {e:?}", mp3.id);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp3s_expire_after_their_days_or_never() {
        let now = now_ms();
        let never = Ttl { days: 0 };
        assert!(!never.expired(0));
        let week = Ttl { days: 7 };
        assert!(!week.expired(now - 6 * DAY_MS));
        assert!(week.expired(now - 7 * DAY_MS - 1));
    }
}
