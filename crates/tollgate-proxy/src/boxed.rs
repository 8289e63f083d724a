//! Futures boxed where they are built.
//!
//! `Box::pin(f())` builds the future on the stack and then copies it into
//! the box: for the request path's large futures (the AI handler's 3.9 KB,
//! the authorisation's 2.1 KB, a connection's 9.9 KB) that was a `memcpy`
//! of that size each time, seen under `gdb`. Allocating the box first lets
//! the compiler build the future inside it.

use std::future::Future;
use std::pin::Pin;

/// `Box::pin(make())`, with the box allocated before `make` runs.
#[inline(always)]
pub(crate) fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_future_boxed_in_place_runs_as_it_would_unboxed() {
        let captured = vec![1u8; 4096];
        let boxed = boxed_in_place(|| async move {
            tokio::task::yield_now().await;
            captured.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert_eq!(boxed.await, 4096);
    }
}
