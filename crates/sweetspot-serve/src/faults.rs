//! Fault injection, for testing clients (`--inject-faults RATE`, hidden): of the POST requests, a
//! share `RATE` misbehaves, in equal parts: a 500 before any work; the work done, then the
//! connection cut in the middle of the answer (the client never learns the result of work that
//! was done); the answer held back for up to two seconds. Which request misbehaves follows a
//! counter through a hash, so a run is reproducible given the order requests arrive in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The fault settings and counter.
#[derive(Debug)]
pub(crate) struct Faults {
    pub(crate) rate: f64,
    pub(crate) seed: u64,
    pub(crate) count: AtomicU64,
}

impl Faults {
    /// A uniform draw in [0, 1) for the next request.
    fn draw(&self) -> f64 {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let mut z = self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The middleware: `faults` is `None` when the server injects none.
pub(crate) async fn inject(
    State(faults): State<Option<Arc<Faults>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(faults) = &faults else {
        return next.run(request).await;
    };
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let u = faults.draw();
    let part = faults.rate / 3.0;
    if u < part {
        tracing::debug!("injected fault: 500");
        return crate::api::ApiError::internal("injected fault").into_response();
    }
    if u < 2.0 * part {
        let response = next.run(request).await;
        tracing::debug!("injected fault: connection cut after the work");
        let (parts, _) = response.into_parts();
        let body = futures_util::stream::iter([
            Ok(bytes::Bytes::from_static(b"{\"choices\": [")),
            Err(std::io::Error::other("injected fault")),
        ]);
        return Response::from_parts(parts, Body::from_stream(body));
    }
    if u < faults.rate {
        let wait = Duration::from_millis(((u - 2.0 * part) / part * 2000.0) as u64);
        tracing::debug!(ms = wait.as_millis() as u64, "injected fault: delay");
        tokio::time::sleep(wait).await;
    }
    next.run(request).await
}
