//! The one error shape every intake response uses:
//! `{"error":{"code","message"}}`, plus `event` when a request did reach the
//! log (a refused claim, a claim the fold has not answered yet).
//!
//! The type lives in `warrant_runtime::api_error`, shared with the
//! projector, so both services answer errors alike; intake names it here.

pub use warrant_runtime::api_error::{ApiError, EventRef, RETRY_AFTER_SECS};
