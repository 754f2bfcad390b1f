//! Fuzzes the `Retry-After` parser: any header value, read at any moment.
//!
//! It never panics (no overflow on huge numbers or far dates), never asks for a wait longer
//! than `MAX_RETRY_AFTER`, and reads every all-digit value.

#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use switchboard::wrapper::rest::MAX_RETRY_AFTER;
use switchboard::wrapper::retry_after;

fuzz_target!(|data: &[u8]| {
    let Some((seconds, value)) = data.split_first_chunk::<4>() else {
        return;
    };
    // Any moment from 1970 to 2106, so HTTP dates land before and after it.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::from_le_bytes(*seconds)));
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    let wait = retry_after(value, now);
    if let Some(wait) = wait {
        assert!(wait <= MAX_RETRY_AFTER, "{value:?} asks for {wait:?}");
    }
    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        assert!(wait.is_some(), "seconds {value:?} not read");
    }
});
