//! The `Date` header's value, formatted once a second per thread rather than
//! once an answer.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT`: always 29 bytes.
const LEN: usize = 29;

thread_local! {
    static NOW: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
}

/// Calls `with` with the current time as an HTTP date.
pub fn now(with: impl FnOnce(&[u8])) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    NOW.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            if formatted.len() == LEN {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            }
        }
        with(text);
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_date_is_an_http_date_of_now() {
        let mut seen = Vec::new();
        super::now(|date| seen.extend_from_slice(date));
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&seen).unwrap()).unwrap();
        let skew = std::time::SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default();
        assert!(skew < std::time::Duration::from_secs(2), "{skew:?}");
    }
}
