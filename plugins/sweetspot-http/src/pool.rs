//! Sending many JSON requests to a set of endpoints: each endpoint has its own concurrency limit
//! (that many workers pull from one shared queue, so a fast endpoint takes more work), a request
//! that fails in a way worth retrying (connection errors, timeouts, a cut answer, 429, 5xx) goes
//! back to the queue after a backoff with jitter and may land on another endpoint, and one that
//! fails `max_retries + 1` times ends the call with a record of every attempt. Answers come back
//! to the calling thread one at a time, each exactly once.
//!
//! The API key is only ever put in the `Authorization` header: it is in no log line, no error and
//! no `Debug` output.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sweetspot_core::{ConfigIssue, PluginError};

/// One endpoint: a base URL (`http://host:port`, with or without `/v1`) and how many requests it
/// takes at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The base URL.
    pub url: String,
    /// Most requests in flight to it.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    64
}

/// An endpoint written as its URL alone, or as a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EndpointSpec {
    /// `"http://host:8000"` (concurrency 64).
    Url(String),
    /// `{ url = "...", concurrency = 256 }`.
    Table(Endpoint),
}

impl EndpointSpec {
    /// The endpoint it names.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Self::Url(url) => Endpoint {
                url: url.clone(),
                concurrency: default_concurrency(),
            },
            Self::Table(e) => e.clone(),
        }
    }
}

/// Checks a list of endpoints, naming the key at fault.
pub fn check_endpoints(endpoints: &[EndpointSpec]) -> Result<(), ConfigIssue> {
    if endpoints.is_empty() {
        return Err(ConfigIssue::new("endpoints", "give at least one base URL"));
    }
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.endpoint();
        let key = format!("endpoints[{i}]");
        if e.url.starts_with("https://") {
            return Err(ConfigIssue::new(
                &key,
                format!(
                    "{}: https is not built into sweetspot; reach the servers over http \
                     (a private network, or a local TLS-terminating proxy)",
                    e.url
                ),
            ));
        }
        let Some(rest) = e.url.strip_prefix("http://") else {
            return Err(ConfigIssue::new(
                &key,
                format!("{:?} is not an http:// URL", e.url),
            ));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(ConfigIssue::new(&key, format!("{:?} has no host", e.url)));
        }
        if e.concurrency == 0 {
            return Err(ConfigIssue::new(
                format!("{key}.concurrency"),
                "must be at least 1",
            ));
        }
    }
    Ok(())
}

/// `base` joined with `path` (`/v1/completions`): a base that already ends in `/v1` is not
/// doubled.
pub fn join(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    match (base.strip_suffix("/v1"), path.strip_prefix("/v1")) {
        (Some(b), Some(_)) => format!("{b}{path}"),
        _ => format!("{base}{path}"),
    }
}

/// How a pool retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The first backoff; it doubles per attempt, up to 30 s, times a jitter in [0.5, 1).
    pub backoff: Duration,
}

impl RetryPolicy {
    /// `max_retries` attempts after the first, each with `timeout_s`; backoff from 250 ms.
    pub fn new(max_retries: u32, timeout_s: f64) -> Self {
        Self {
            max_retries,
            timeout: Duration::from_secs_f64(timeout_s),
            backoff: Duration::from_millis(250),
        }
    }
}

/// Endpoints, an HTTP client and a runtime to drive them.
pub struct Pool {
    endpoints: Vec<Endpoint>,
    client: reqwest::Client,
    api_key: Option<String>,
    retry: RetryPolicy,
    runtime: tokio::runtime::Runtime,
    /// The plugin's name, for messages.
    who: &'static str,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.endpoints)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Reads the API key from the variable named by `api_key_env`, if any.
pub fn api_key(who: &str, api_key_env: Option<&str>) -> Result<Option<String>, PluginError> {
    let Some(name) = api_key_env else {
        return Ok(None);
    };
    match std::env::var(name) {
        Ok(k) if !k.is_empty() => Ok(Some(k)),
        _ => Err(PluginError::config(
            who,
            format!("`api_key_env`: the environment variable {name} is not set"),
        )),
    }
}

/// The outcome of one attempt.
enum Attempt {
    Done(Value),
    /// Worth another try (the message says why).
    Retry(String),
    /// Not worth another try.
    Fatal(String),
}

struct Unit {
    index: usize,
    body: Arc<Value>,
    /// Every failed attempt so far: endpoint and why.
    failures: Vec<String>,
}

enum Event {
    Done(usize, Value),
    Failed(String),
}

impl Pool {
    /// A pool over `endpoints`.
    pub fn new(
        who: &'static str,
        endpoints: &[EndpointSpec],
        api_key: Option<String>,
        retry: RetryPolicy,
    ) -> Result<Self, PluginError> {
        check_endpoints(endpoints).map_err(|i| PluginError::config(who, i.to_string()))?;
        let endpoints: Vec<Endpoint> = endpoints.iter().map(EndpointSpec::endpoint).collect();
        let total: usize = endpoints.iter().map(|e| e.concurrency).sum();
        let client = reqwest::Client::builder()
            .timeout(retry.timeout)
            .connect_timeout(Duration::from_secs(10).min(retry.timeout))
            .pool_max_idle_per_host(total)
            .build()
            .map_err(|e| PluginError::other("making the HTTP client", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name(who)
            .build()
            .map_err(|e| PluginError::other("starting the HTTP runtime", e))?;
        Ok(Self {
            endpoints,
            client,
            api_key,
            retry,
            runtime,
            who,
        })
    }

    /// POSTs every body to `path` on the endpoints and calls `on_done(i, answer)` on this thread
    /// for body `i`'s answer, exactly once each, in the order they arrive. Stops at the first
    /// request that gives up, or the first error of `on_done`; requests still in flight are
    /// abandoned (their answers are dropped).
    pub fn post_all(
        &self,
        path: &str,
        bodies: Vec<Value>,
        mut on_done: impl FnMut(usize, Value) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        let total = bodies.len();
        if total == 0 {
            return Ok(());
        }
        let queue: Arc<Mutex<VecDeque<Unit>>> = Arc::new(Mutex::new(
            bodies
                .into_iter()
                .enumerate()
                .map(|(index, body)| Unit {
                    index,
                    body: Arc::new(body),
                    failures: Vec::new(),
                })
                .collect(),
        ));
        // Units not yet answered (queued, in flight, or waiting out a backoff).
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(total));
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let mut workers = tokio::task::JoinSet::new();
        for endpoint in &self.endpoints {
            let url = join(&endpoint.url, path);
            for _ in 0..endpoint.concurrency.min(total) {
                let worker = Worker {
                    url: url.clone(),
                    client: self.client.clone(),
                    api_key: self.api_key.clone(),
                    retry: self.retry,
                    queue: queue.clone(),
                    open: open.clone(),
                    stop: stop.clone(),
                    wake: wake.clone(),
                    tx: tx.clone(),
                };
                workers.spawn_on(worker.run(), self.runtime.handle());
            }
        }
        drop(tx);
        let mut seen = vec![false; total];
        let mut result = Ok(());
        let mut answered = 0;
        while answered < total {
            let Some(event) = rx.blocking_recv() else {
                result = Err(PluginError::Input(format!(
                    "{}: the HTTP workers stopped with {} requests unanswered",
                    self.who,
                    total - answered
                )));
                break;
            };
            match event {
                Event::Done(i, value) => {
                    // A unit is queued once and answered once; this guards the invariant.
                    if std::mem::replace(&mut seen[i], true) {
                        continue;
                    }
                    answered += 1;
                    if let Err(e) = on_done(i, value) {
                        result = Err(e);
                        break;
                    }
                }
                Event::Failed(message) => {
                    result = Err(PluginError::Input(format!("{}: {message}", self.who)));
                    break;
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        // Dropping the set aborts the workers still running.
        drop(workers);
        result
    }
}

struct Worker {
    url: String,
    client: reqwest::Client,
    api_key: Option<String>,
    retry: RetryPolicy,
    queue: Arc<Mutex<VecDeque<Unit>>>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl Worker {
    async fn run(self) {
        loop {
            if self.stop.load(Ordering::SeqCst) || self.open.load(Ordering::SeqCst) == 0 {
                return;
            }
            let unit = self.queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
            let Some(mut unit) = unit else {
                // Others hold the remaining units (in flight or backing off): wait for a
                // retry to come back, or for the end (the timeout only covers a lost wake-up).
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            match self.attempt(&unit.body).await {
                Attempt::Done(v) => {
                    if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
                        // The last answer: idle workers end.
                        self.wake.notify_waiters();
                    }
                    let _ = self.tx.send(Event::Done(unit.index, v));
                }
                Attempt::Fatal(why) => {
                    let _ = self.tx.send(Event::Failed(format!(
                        "request {} to {}: {why}",
                        unit.index, self.url
                    )));
                    return;
                }
                Attempt::Retry(why) => {
                    unit.failures.push(format!("{}: {why}", self.url));
                    let attempts = unit.failures.len() as u32;
                    if attempts > self.retry.max_retries {
                        let _ = self.tx.send(Event::Failed(format!(
                            "request {} gave up after {attempts} attempts (max_retries = {}):\n  {}",
                            unit.index,
                            self.retry.max_retries,
                            unit.failures.join("\n  ")
                        )));
                        return;
                    }
                    tracing::warn!(
                        url = %self.url,
                        request = unit.index,
                        attempt = attempts,
                        "{why}; retrying"
                    );
                    let wait = backoff(self.retry.backoff, attempts, unit.index);
                    let queue = self.queue.clone();
                    let wake = self.wake.clone();
                    // Back off without holding this worker: it serves other units meanwhile.
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        if let Ok(mut q) = queue.lock() {
                            q.push_back(unit);
                        }
                        wake.notify_one();
                    });
                }
            }
        }
    }

    async fn attempt(&self, body: &Value) -> Attempt {
        let mut request = self.client.post(&self.url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(describe(&e)),
        };
        let status = response.status();
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Retry(format!(
                    "HTTP {status}, the answer was cut: {}",
                    describe(&e)
                ));
            }
        };
        if status.as_u16() == 429 || status.is_server_error() {
            return Attempt::Retry(format!("HTTP {status}: {}", snippet(&text)));
        }
        if !status.is_success() {
            return Attempt::Fatal(format!("HTTP {status}: {}", snippet(&text)));
        }
        match serde_json::from_str(&text) {
            Ok(v) => Attempt::Done(v),
            // A 200 whose body does not parse was cut or garbled on the way.
            Err(e) => Attempt::Retry(format!("HTTP {status} but the answer is not JSON: {e}")),
        }
    }
}

/// A reqwest error as one line (its source chain, without the URL's credentials: there are none,
/// the key travels in a header).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
}

/// `base * 2^(attempt-1)`, at most 30 s, times a jitter in [0.5, 1) from the unit and attempt.
fn backoff(base: Duration, attempt: u32, unit: usize) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(Duration::from_secs(30));
    let mut z = (unit as u64) << 8 | u64::from(attempt);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let jitter = 0.5 + 0.5 * ((z >> 11) as f64 / (1u64 << 53) as f64);
    capped.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_does_not_double_v1() {
        assert_eq!(
            join("http://h:1", "/v1/completions"),
            "http://h:1/v1/completions"
        );
        assert_eq!(
            join("http://h:1/v1/", "/v1/completions"),
            "http://h:1/v1/completions"
        );
        assert_eq!(join("http://h:1/v1", "/classify"), "http://h:1/v1/classify");
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let b = Duration::from_millis(100);
        let d1 = backoff(b, 1, 0);
        assert!(d1 >= Duration::from_millis(50) && d1 < Duration::from_millis(100));
        let d4 = backoff(b, 4, 0);
        assert!(d4 >= Duration::from_millis(400) && d4 < Duration::from_millis(800));
        assert!(backoff(b, 30, 0) <= Duration::from_secs(30));
    }

    #[test]
    fn endpoints_are_checked_by_name() {
        let e = |u: &str| vec![EndpointSpec::Url(u.into())];
        assert!(check_endpoints(&e("http://127.0.0.1:8000")).is_ok());
        assert!(
            check_endpoints(&e("https://x"))
                .unwrap_err()
                .to_string()
                .contains("endpoints[0]")
        );
        assert!(check_endpoints(&e("ftp://x")).is_err());
        assert!(check_endpoints(&[]).is_err());
        let zero = vec![EndpointSpec::Table(Endpoint {
            url: "http://x".into(),
            concurrency: 0,
        })];
        assert!(
            check_endpoints(&zero)
                .unwrap_err()
                .to_string()
                .contains("endpoints[0].concurrency")
        );
    }
}
