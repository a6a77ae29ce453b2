//! When JetStream refuses a write for want of space.
//!
//! A server at its `max_file_store` answers a publish with `insufficient
//! resources` (error code 10023); a stream at its own limits with discard
//! `new` answers `maximum bytes exceeded` / `maximum messages exceeded`
//! (10077, which a failing disk also answers). Both are 503s that say the
//! same thing to whoever wrote: nothing was stored, and the same write can
//! succeed once space returns. The kit turns them into one kind per layer —
//! [`StateError::Full`](crate::state::StateError::Full),
//! [`EventError::StorageFull`](crate::events::EventError::StorageFull), a
//! 503 [`ServiceError::storage_full`](crate::ServiceError::storage_full)
//! for callers, and for consumers a
//! [`HandlerError::Unavailable`](crate::events::HandlerError::Unavailable)
//! that is retried in place without counting as a failure — so a full disk
//! delays events and never dead-letters them.

use async_nats::jetstream::ErrorCode;

/// Whether a JetStream error code means "no space for this write".
pub(crate) fn is_full_code(code: u64) -> bool {
    code == ErrorCode::INSUFFICIENT_RESOURCES.0 || code == ErrorCode::STREAM_STORE_FAILED.0
}

/// The server's words, if `error` (or an error it was caused by) is a
/// JetStream refusal for want of space.
pub(crate) fn full_reason(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(js) = error.downcast_ref::<async_nats::jetstream::Error>()
            && is_full_code(js.error_code().0)
        {
            return Some(js.to_string());
        }
        current = error.source();
    }
    None
}
