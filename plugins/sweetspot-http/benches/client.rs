//! The HTTP client is never the bottleneck: requests/s and the client's CPU time per request of
//! the `openai` sampler's pool, with 1,024 requests in flight, against a trivial local endpoint
//! (answers at once with a fixed completion: the client's own ceiling) and against `sweetspot
//! serve` over the tiny fixture policy (one token per answer), each server in its own process.
//!
//!     cargo build --release && cargo bench -p sweetspot-http --bench client
//!
//! Linux only (client CPU from /proc/self/stat). Results: docs/benchmarks.md.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sweetspot_http::pool::{Endpoint, EndpointSpec, Pool, RetryPolicy};

const REQUESTS: usize = 20_000;
const IN_FLIGHT: usize = 1024;

/// The trivial endpoint: a fixed completion for every POST.
fn trivial_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let answer = json!({
            "id": "cmpl-0", "object": "text_completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "text": "ok", "finish_reason": "stop", "token_ids": [1, 2]}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        });
        let app = axum::Router::new().route(
            "/v1/completions",
            axum::routing::post(move || {
                let a = answer.clone();
                async move { axum::Json(a) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on http://{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn start(cmd: &mut Command) -> (std::process::Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    (child, url)
}

fn measure(name: &str, url: &str, requests: usize) {
    let pool = Pool::new(
        "bench",
        &[EndpointSpec::Table(Endpoint {
            url: url.to_string(),
            concurrency: IN_FLIGHT,
        })],
        None,
        RetryPolicy {
            max_retries: 3,
            timeout: Duration::from_secs(300),
            backoff: Duration::from_millis(100),
        },
    )
    .unwrap();
    let bodies: Vec<_> = (0..requests)
        .map(|i| {
            json!({"model": "policy", "prompt": [1, 7, 9, 3], "n": 1, "seed": i,
                   "temperature": 0.8, "top_p": 1.0, "top_k": -1, "max_tokens": 1,
                   "return_token_ids": true})
        })
        .collect();
    let cpu = cpu_seconds();
    let t = Instant::now();
    let mut answers = 0;
    pool.post_all("/v1/completions", bodies, |_, v| {
        assert!(v["choices"].is_array());
        answers += 1;
        Ok(())
    })
    .unwrap();
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    assert_eq!(answers, requests);
    println!(
        "| {name} | {requests} | {IN_FLIGHT} | {wall:.2} | {:.0} | {:.1} | {:.0}% |",
        requests as f64 / wall,
        cpu / requests as f64 * 1e6,
        cpu / wall * 100.0
    );
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("server") {
        trivial_server();
        return;
    }
    println!(
        "| endpoint | requests | in flight | seconds | requests/s | client CPU µs/request | client CPU |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let (mut trivial, url) = start(Command::new(std::env::current_exe().unwrap()).arg("server"));
    measure("trivial local endpoint", &url, REQUESTS);
    let _ = trivial.kill();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = root.join("target/release/sweetspot");
    if bin.exists() {
        let (mut serve, url) = start(
            Command::new(&bin)
                .args(["-q", "serve"])
                .arg(root.join("tests/fixtures/models/policy"))
                .args(["--port", "0", "--batch-size", "256"]),
        );
        measure("sweetspot serve (tiny policy, 1 token)", &url, REQUESTS / 4);
        let _ = serve.kill();
    } else {
        println!("(build the release binary to measure against sweetspot serve)");
    }
}
