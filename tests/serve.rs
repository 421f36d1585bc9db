//! Scale-out against real servers on loopback: `sweetspot serve` over the fixture models, the
//! `openai` sampler and the `http` reward talking to it.
//!
//! - The same recipe through the servers gives the same samples (token ids decoded alike), the
//!   same scores (within 1e-4) and the same pairs as the in-process plugins, greedy and seeded.
//! - With a server that fails a share of requests (500s, connections cut after the work was
//!   done, delays), every sample arrives exactly once.
//! - A run killed (SIGKILL) mid-stage resumes with nothing lost or duplicated.
//! - The API key is in no log line and no file of the run folder; a wrong key fails clearly.
//! - The official `openai` Python client works against the server unchanged (where Python and
//!   the package are present; required under CI).

mod common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/models").join(name)
}

fn bin() -> PathBuf {
    std::env::var_os("SWEETSPOT_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_sweetspot").into())
        .into()
}

/// A running `sweetspot serve`, killed on drop. Its stderr goes to `log`.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_model(dir, name, &fixture("policy"), args, env)
    }

    fn start_model(
        dir: &Path,
        name: &str,
        model: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(bin());
        cmd.arg("-v")
            .arg("serve")
            .arg(model)
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("sweetspot serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "the server did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, url, log }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PROMPTS: &str = "{\"prompt\": \"a cat\"}\n\
{\"prompt\": [{\"role\": \"user\", \"content\": \"tell me a story\"}], \"prompt_id\": \"chat-1\"}\n\
{\"prompt\": \"the dog\"}\n\
{\"prompt\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"why?\"}]}\n";

/// A recipe: `sampler` and `reward` tables, n samples per prompt, the grid and max-min pairs.
fn recipe(dir: &Path, name: &str, sampler: &str, reward: &str, n: usize) -> PathBuf {
    std::fs::write(dir.join("prompts.jsonl"), PROMPTS).unwrap();
    let text = format!(
        "[run]\nname = \"{name}\"\nseed = 11\n\n[sampler]\n{sampler}\n\n[generate]\n\
         prompts = \"prompts.jsonl\"\nn = {n}\n\n[reward]\n{reward}\n\n[score]\n\n\
         [pairs]\nn = [{n}]\n\n[[pairs.strategies]]\ntype = \"grid\"\n\n\
         [[pairs.strategies]]\ntype = \"max-min\"\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn native_sampler(temperature: f32) -> String {
    format!(
        "type = \"burn\"\nmodel = {:?}\ntemperature = {temperature}\nmax_new_tokens = 7",
        fixture("policy")
    )
}

/// The `openai` sampler on one endpoint with `concurrency` requests in flight.
fn remote_sampler(url: &str, concurrency: usize, temperature: f32, extra: &str) -> String {
    format!(
        "type = \"openai\"\nendpoints = [{{ url = {url:?}, concurrency = {concurrency} }}]\n\
         model = \"policy\"\ntokenizer = {:?}\n\
         temperature = {temperature}\nmax_new_tokens = 7\n{extra}",
        fixture("policy")
    )
}

fn run(recipe: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<std::ffi::OsString> = vec!["run".into(), recipe.into()];
    args.extend(extra.iter().map(Into::into));
    sweetspot(args)
}

/// Rows keyed by (prompt id, sample index), with `logprob` dropped (the servers do not return
/// it) and the reward fields taken apart for a tolerance.
fn rows(path: &Path) -> Vec<(String, u64, serde_json::Value)> {
    let mut out: Vec<_> = read_jsonl(path)
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("logprob");
            (
                r["prompt_id"].as_str().unwrap().to_string(),
                r["sample_index"].as_u64().unwrap(),
                r,
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out
}

fn assert_same_samples(native: &Path, remote: &Path) {
    let (a, b) = (rows(native), rows(remote));
    assert_eq!(a.len(), b.len());
    let keys: BTreeSet<_> = b.iter().map(|r| (r.0.clone(), r.1)).collect();
    assert_eq!(keys.len(), b.len(), "a sample is duplicated");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.2, y.2);
    }
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
        serde_json::Value::Null => Vec::new(),
        x => vec![x.as_f64().unwrap()],
    }
}

fn assert_same_scores(native: &Path, remote: &Path) {
    let (a, b) = (rows(native), rows(remote));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (mut x, mut y) = (x.2.clone(), y.2.clone());
        for key in ["reward", "objective_rewards"] {
            let (u, v) = (floats(&x[key]), floats(&y[key]));
            assert_eq!(u.len(), v.len(), "{key}");
            for (p, q) in u.iter().zip(&v) {
                assert!((p - q).abs() <= 1e-4, "{key}: {p} vs {q}");
            }
            x.as_object_mut().unwrap().remove(key);
            y.as_object_mut().unwrap().remove(key);
        }
        assert_eq!(x, y);
    }
}

/// The pair files of a run, each as its lines (in the prompts' order, however a fleet answered).
fn pairs(run: &Path, n: usize) -> Vec<(String, Vec<String>)> {
    let dir = run.join(format!("pairs/n{n}"));
    let mut out = Vec::new();
    for name in files(&dir) {
        if !name.ends_with(".jsonl") {
            continue;
        }
        let lines: Vec<String> = std::fs::read_to_string(dir.join(&name))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        out.push((name, lines));
    }
    assert!(out.len() >= 22, "{out:?}");
    out
}

#[test]
fn the_servers_give_the_in_process_samples_scores_and_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(
        dir,
        "armorm",
        &[
            "--reward-model",
            fixture("armorm").to_str().unwrap(),
            "--reward-type",
            "armorm",
            "--batch-size",
            "5",
        ],
        &[],
    );
    let seq_cls = Server::start(
        dir,
        "seq-cls",
        &["--reward-model", fixture("seq-cls").to_str().unwrap()],
        &[],
    );
    // Seeded sampling, ArmoRM (objectives) through vLLM's shape; greedy, seq-cls through
    // SGLang's; the samples of a prompt split over requests one way, then another.
    let cases = [
        (
            0.9,
            "armorm",
            &server,
            format!(
                "type = \"armorm\"\nmodel = {:?}\nbatch_size = 3",
                fixture("armorm")
            ),
            "objectives = \"armorm\"\nbatch_size = 5",
            "samples_per_request = 4",
            6,
        ),
        (
            0.0,
            "seq-cls",
            &seq_cls,
            format!("type = \"seq-cls\"\nmodel = {:?}", fixture("seq-cls")),
            "api = \"sglang\"\nbatch_size = 2",
            "samples_per_request = 0",
            5,
        ),
        // The chat route: the server renders the same template, so the same samples.
        (
            0.7,
            "seq-cls",
            &seq_cls,
            format!("type = \"seq-cls\"\nmodel = {:?}", fixture("seq-cls")),
            "batch_size = 7",
            "api = \"chat\"\nsamples_per_request = 3",
            4,
        ),
    ];
    for (case, (temperature, rm, srv, native_reward, reward_extra, sampler_extra, n)) in
        cases.into_iter().enumerate()
    {
        let rm_name = rm;
        let rm = &format!("{rm}-{case}")[..];
        let native = recipe(
            dir,
            &format!("native-{rm}"),
            &native_sampler(temperature),
            &native_reward,
            n,
        );
        let remote_reward = format!(
            "type = \"http\"\nendpoints = [{:?}]\nmodel = {rm_name:?}\ntokenizer = {:?}\n\
             {reward_extra}",
            srv.url,
            fixture(rm_name)
        );
        let remote = recipe(
            dir,
            &format!("remote-{rm}"),
            &remote_sampler(&srv.url, 16, temperature, sampler_extra),
            &remote_reward,
            n,
        );
        assert_ok(&run(&native, &[]));
        assert_ok(&run(&remote, &[]));
        let (a, b) = (
            dir.join(format!("runs/native-{rm}")),
            dir.join(format!("runs/remote-{rm}")),
        );
        assert_same_samples(&a.join("samples.jsonl"), &b.join("samples.jsonl"));
        // In the same order too: the stage writes groups in the prompts' order.
        let keys = |p: &Path| -> Vec<(String, u64)> {
            read_jsonl(p)
                .iter()
                .map(|r| {
                    (
                        r["prompt_id"].as_str().unwrap().to_string(),
                        r["sample_index"].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(
            keys(&a.join("samples.jsonl")),
            keys(&b.join("samples.jsonl"))
        );
        assert_same_scores(&a.join("scored.jsonl"), &b.join("scored.jsonl"));
        assert_eq!(pairs(&a, n), pairs(&b, n), "{rm}");
        if temperature > 0.0 {
            // Seeded draws differ between samples (the seeds are really per sample).
            let texts: BTreeSet<String> = rows(&b.join("samples.jsonl"))
                .iter()
                .map(|r| r.2["response"].to_string())
                .collect();
            assert!(texts.len() > n, "{texts:?}");
        }
    }
}

#[test]
fn a_failing_server_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(
        dir,
        "faulty",
        &["--inject-faults", "0.3", "--fault-seed", "5"],
        &[],
    );
    let n = 6;
    let native = recipe(dir, "native", &native_sampler(0.8), &seq_cls_native(), n);
    // One request per sample, many in flight: 24 requests, of which about 7 misbehave.
    let remote = recipe(
        dir,
        "remote",
        &remote_sampler(
            &server.url,
            8,
            0.8,
            "samples_per_request = 1\nmax_retries = 30\ntimeout_s = 20",
        ),
        &seq_cls_native(),
        n,
    );
    assert_ok(&run(&native, &[]));
    let o = run(&remote, &["-v"]);
    assert_ok(&o);
    assert_same_samples(
        &dir.join("runs/native/samples.jsonl"),
        &dir.join("runs/remote/samples.jsonl"),
    );
    // The faults really happened, and were retried.
    let log = std::fs::read_to_string(&server.log).unwrap();
    for fault in [
        "injected fault: 500",
        "injected fault: connection cut",
        "injected fault: delay",
    ] {
        assert!(log.contains(fault), "no {fault:?} in the server's log");
    }
    assert!(stderr(&o).contains("retrying"), "{}", stderr(&o));
}

/// `serve --quantize q8_0`: the policy and the reward model in 8 bits, as the in-process
/// plugins with `quantize = "q8_0"` compute them (the same samples, the same scores), and not as
/// f32 does (the scores move); refused with another dtype or device before the model loads.
#[test]
fn an_8bit_server_gives_the_in_process_8bit_samples_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seq_cls = fixture("seq-cls");
    let server = Server::start(
        dir,
        "q8",
        &[
            "--quantize",
            "q8_0",
            "--reward-model",
            seq_cls.to_str().unwrap(),
        ],
        &[],
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("quantize = \"q8_0\""), "{log}");
    let n = 4;
    let q8 = "\nquantize = \"q8_0\"";
    let native = recipe(
        dir,
        "native-q8",
        &(native_sampler(0.8) + q8),
        &(seq_cls_native() + q8),
        n,
    );
    let f32 = recipe(
        dir,
        "native-f32",
        &native_sampler(0.8),
        &seq_cls_native(),
        n,
    );
    let remote_reward = format!(
        "type = \"http\"\nendpoints = [{:?}]\nmodel = \"seq-cls\"\ntokenizer = {seq_cls:?}",
        server.url
    );
    let remote = recipe(
        dir,
        "remote-q8",
        &remote_sampler(&server.url, 4, 0.8, ""),
        &remote_reward,
        n,
    );
    for r in [&native, &f32, &remote] {
        assert_ok(&run(r, &[]));
    }
    let run_dir = |name: &str| dir.join("runs").join(name);
    assert_same_samples(
        &run_dir("native-q8").join("samples.jsonl"),
        &run_dir("remote-q8").join("samples.jsonl"),
    );
    assert_same_scores(
        &run_dir("native-q8").join("scored.jsonl"),
        &run_dir("remote-q8").join("scored.jsonl"),
    );
    // The 8-bit scores are not the f32 ones (so the server did compute in 8 bits).
    let rewards = |name: &str| -> Vec<f64> {
        rows(&run_dir(name).join("scored.jsonl"))
            .iter()
            .map(|r| r.2["reward"].as_f64().unwrap())
            .collect()
    };
    let (a, b) = (rewards("native-q8"), rewards("native-f32"));
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-4),
        "8-bit and f32 scores agree: {a:?}"
    );
    // Refused by flag before anything loads.
    for extra in [["--dtype", "bf16"], ["--device", "wgpu"]] {
        let o = Command::new(bin())
            .arg("serve")
            .arg(fixture("policy"))
            .args(["--port", "0", "--quantize", "q8_0"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--quantize"), "{}", stderr(&o));
    }
}

fn seq_cls_native() -> String {
    format!("type = \"seq-cls\"\nmodel = {:?}", fixture("seq-cls"))
}

#[test]
fn a_killed_run_resumes_with_nothing_lost_or_duplicated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let n = 4;
    let native = recipe(dir, "native", &native_sampler(0.8), &seq_cls_native(), n);
    assert_ok(&run(&native, &[]));
    // A slow, failing server: the run is still sampling when it is killed.
    let slow = Server::start(
        dir,
        "slow",
        &["--inject-faults", "0.9", "--fault-seed", "3"],
        &[],
    );
    let sampler = remote_sampler(
        &slow.url,
        1,
        0.8,
        "samples_per_request = 1\nmax_retries = 50\ntimeout_s = 20",
    );
    let remote = recipe(dir, "remote", &sampler, &seq_cls_native(), n);
    let mut child = Command::new(bin())
        .args(["-q", "run"])
        .arg(&remote)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let nodes = dir.join("runs/remote/nodes");
    let started = Instant::now();
    let partial = loop {
        let found = std::fs::read_dir(&nodes).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("samples.jsonl.partial"))
                .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.lines().count() >= n))
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no group reached the partial file"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = std::fs::read_to_string(&partial).unwrap().lines().count();
    assert!(kept >= n && kept < 4 * n, "killed too late: {kept} rows");
    drop(slow);
    // Resume against a healthy server (another address: endpoints are not part of what a
    // stage computes).
    let healthy = Server::start(dir, "healthy", &[], &[]);
    std::fs::write(
        &remote,
        std::fs::read_to_string(&remote)
            .unwrap()
            .replace(&slow_url(&remote), &healthy.url),
    )
    .unwrap();
    let o = run(&remote, &[]);
    assert_ok(&o);
    assert_same_samples(
        &dir.join("runs/native/samples.jsonl"),
        &dir.join("runs/remote/samples.jsonl"),
    );
}

/// The endpoint URL written in a recipe.
fn slow_url(recipe: &Path) -> String {
    let text = std::fs::read_to_string(recipe).unwrap();
    let at = text.find("http://").unwrap();
    let end = text[at..].find('"').unwrap();
    text[at..at + end].to_string()
}

#[test]
fn the_api_key_is_never_logged_or_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secret = "sk-sweetspot-test-4b1d0c9e";
    let server = Server::start(dir, "keyed", &[], &[("SWEETSPOT_API_KEY", secret)]);
    let sampler = remote_sampler(&server.url, 4, 0.8, "api_key_env = \"TEST_FLEET_KEY\"");
    let reward = seq_cls_native();
    let remote = recipe(dir, "keyed", &sampler, &reward, 3);
    // Without the key in the environment: refused by name.
    let o = run(&remote, &[]);
    let err = assert_clean_failure(&o, 2);
    assert!(err.contains("TEST_FLEET_KEY"), "{err}");
    // A wrong key: the server's 401, not retried.
    let o = Command::new(bin())
        .args(["-q", "run"])
        .arg(&remote)
        .env("TEST_FLEET_KEY", "wrong")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    // The right key, with trace logging on both sides.
    let o = Command::new(bin())
        .args(["-vv", "run"])
        .arg(&remote)
        .env("TEST_FLEET_KEY", secret)
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(!stdout(&o).contains(secret) && !stderr(&o).contains(secret));
    assert!(
        !std::fs::read_to_string(&server.log)
            .unwrap()
            .contains(secret)
    );
    let mut stack = vec![dir.join("runs")];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                seen += 1;
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the API key",
                    p.display()
                );
            }
        }
    }
    assert!(seen > 5);
}

#[test]
fn the_openai_python_client_works_unchanged() {
    let has_client = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        assert!(
            std::env::var_os("CI").is_none(),
            "the openai Python package is missing under CI"
        );
        eprintln!("skipping: python3 with the openai package not found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(
        dir,
        "py",
        &["--served-model-name", "tiny"],
        &[("SWEETSPOT_API_KEY", "k-123")],
    );
    let o = Command::new("python3")
        .arg(root().join("tests/python/openai_client.py"))
        .arg(format!("{}/v1", server.url))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["models"], serde_json::json!(["tiny"]));
    assert_eq!(got["wrong_key"], "AuthenticationError");
    assert_eq!(got["unknown_field"], "BadRequestError");
    // The completion's choices are the in-process draws for seeds 5, 6, 7.
    let device = sweetspot_model::resolve_device("cpu").unwrap();
    let (model, tok) = sweetspot_model::load_causal_lm(
        &fixture("policy"),
        &device,
        sweetspot_model::Precision::F32,
    )
    .unwrap();
    let ids: Vec<u32> = got["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let reqs: Vec<_> = (0..3)
        .map(|i| sweetspot_model::generate::SeqRequest {
            prompt_ids: ids.clone(),
            seed: 5 + i,
        })
        .collect();
    let params = sweetspot_model::generate::SamplingParams::new(0.8, 0.95, 0, 6);
    let want = sweetspot_model::generate::generate(&model, &reqs, tok.stop_ids(), &params, |_| {})
        .unwrap();
    let choices = got["completion"]["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut tokens = 0;
    for (c, w) in choices.iter().zip(&want) {
        let got_ids: Vec<u32> = c["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got_ids, w.tokens);
        tokens += w.tokens.len() as u64;
    }
    let usage = &got["completion"]["usage"];
    assert_eq!(usage["prompt_tokens"].as_u64(), Some(ids.len() as u64));
    assert_eq!(usage["completion_tokens"].as_u64(), Some(tokens));
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(ids.len() as u64 + tokens)
    );
    assert_eq!(got["chat"]["choices"].as_array().unwrap().len(), 2);
    assert!(got["chat"]["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

/// POSTs `body` to `url` + `path` over a plain socket (HTTP/1.1, one request per connection):
/// what `vllm run-batch` or a batch API does with each line, here against `sweetspot serve`.
fn post(url: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let host = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

#[test]
fn batch_export_then_import_gives_the_live_clients_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(dir, "batch", &[], &[]);
    let n = 5;
    // Two samples per live request: the batch file asks one per line, with the same seeds.
    let remote = recipe(
        dir,
        "live",
        &remote_sampler(&server.url, 4, 0.8, "samples_per_request = 2"),
        &seq_cls_native(),
        n,
    );
    let live = dir.join("live.jsonl");
    assert_ok(&sweetspot([
        "generate".as_ref(),
        "--recipe".as_ref(),
        remote.as_os_str(),
        "-o".as_ref(),
        live.as_os_str(),
    ]));
    let requests = dir.join("requests.jsonl");
    let o = sweetspot([
        "batch".as_ref(),
        "export".as_ref(),
        "--recipe".as_ref(),
        remote.as_os_str(),
        "-o".as_ref(),
        requests.as_os_str(),
    ]);
    assert_ok(&o);
    let lines = read_jsonl(&requests);
    assert_eq!(lines.len(), 4 * n);
    // Run every line (in reverse, as a batch engine may), in the OpenAI batch output shape.
    let mut results = Vec::new();
    for (i, line) in lines.iter().enumerate().rev() {
        assert_eq!(line["method"], "POST");
        assert_eq!(line["body"]["max_tokens"], 7);
        let (status, body) = post(
            &server.url,
            line["url"].as_str().unwrap(),
            &line["body"].to_string(),
        );
        results.push(serde_json::json!({
            "id": format!("batch-{i}"),
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": format!("r{i}"), "body": body},
            "error": null,
        }));
    }
    let write = |name: &str, rows: &[serde_json::Value]| {
        let p = dir.join(name);
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&p, text).unwrap();
        p
    };
    let import = |results: &Path, out: &Path| {
        sweetspot([
            "batch".as_ref(),
            "import".as_ref(),
            "--recipe".as_ref(),
            remote.as_os_str(),
            "--results".as_ref(),
            results.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ])
    };
    let imported = dir.join("imported.jsonl");
    assert_ok(&import(&write("results.jsonl", &results), &imported));
    assert_same_samples(&live, &imported);
    // Imported in the prompts' order, samples by index.
    let order: Vec<u64> = read_jsonl(&imported)
        .iter()
        .map(|r| r["sample_index"].as_u64().unwrap())
        .collect();
    assert_eq!(&order[..n], &(0..n as u64).collect::<Vec<_>>()[..]);
    // A repeated line, a missing one, a failed one: each refused, naming the file and line,
    // and nothing written.
    let mut repeated = results.clone();
    repeated.push(results[3].clone());
    let mut failed = results.clone();
    failed[2]["response"]["status_code"] = serde_json::json!(500);
    for (name, rows, says) in [
        ("repeated.jsonl", repeated, "already answered on line 4"),
        (
            "missing.jsonl",
            results[1..].to_vec(),
            "1 of 20 samples have no result",
        ),
        ("failed.jsonl", failed, "failed.jsonl:3: status 500"),
    ] {
        let out = dir.join(format!("out-{name}"));
        let o = import(&write(name, &rows), &out);
        let err = assert_clean_failure(&o, 1);
        assert!(err.contains(says), "{name}: {err}");
        assert!(!out.exists());
    }
}

/// Sends `head` (the request line and headers, without the blank line) and `body` on a new
/// connection and reads the answer: its status and JSON body (Null when not JSON).
fn exchange(url: &str, head: &str, body: &[u8]) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let host = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{head}\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A server may answer (413) before it has read the whole body, and close.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {answer:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn post_json(url: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    exchange(
        url,
        &format!("POST {path} HTTP/1.1\r\nContent-Type: application/json"),
        body.as_bytes(),
    )
}

/// OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`, message non-empty.
#[track_caller]
fn assert_openai_error(answer: &(u16, serde_json::Value), status: u16, says: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    let e = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{body}"));
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(says), "{message:?} does not say {says:?}");
    assert!(e["type"].is_string(), "{body}");
    assert_eq!(e["code"], status, "{body}");
}

#[test]
fn every_rejection_is_an_openai_error_with_its_status() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        "errors",
        &[
            "--max-body-bytes",
            "4096",
            "--max-sequences-per-request",
            "100",
            "--max-tokens-per-request",
            "5000",
        ],
        &[],
    );
    let url = &server.url;
    let cases: Vec<(&str, (u16, serde_json::Value), u16, &str)> = vec![
        (
            "malformed JSON",
            post_json(url, "/v1/completions", "{\"prompt\": \"a\","),
            400,
            "JSON",
        ),
        (
            "a body too large",
            post_json(
                url,
                "/v1/completions",
                &format!("{{\"prompt\": \"{}\"}}", "a".repeat(5000)),
            ),
            413,
            "--max-body-bytes",
        ),
        (
            "a wrong Content-Type",
            exchange(
                url,
                "POST /v1/completions HTTP/1.1\r\nContent-Type: text/plain",
                b"{\"prompt\": \"a\"}",
            ),
            415,
            "Content-Type: application/json",
        ),
        (
            "no Content-Type",
            exchange(url, "POST /v1/chat/completions HTTP/1.1", b"{}"),
            415,
            "Content-Type",
        ),
        (
            "nesting too deep",
            post_json(
                url,
                "/v1/completions",
                &format!("{{\"prompt\": {}{}}}", "[".repeat(300), "]".repeat(300)),
            ),
            400,
            "recursion limit",
        ),
        (
            "not an object",
            post_json(url, "/v1/completions", "[1, 2]"),
            400,
            "JSON object",
        ),
        (
            "an unknown route",
            post_json(url, "/v1/embeddings", "{}"),
            404,
            "/v1/embeddings",
        ),
        (
            "an unknown GET route",
            exchange(url, "GET /v2/models HTTP/1.1", b""),
            404,
            "/v2/models",
        ),
        (
            "a wrong method",
            exchange(url, "GET /v1/completions HTTP/1.1", b""),
            405,
            "GET",
        ),
        (
            "an unknown model",
            post_json(
                url,
                "/v1/completions",
                "{\"model\": \"gpt-9\", \"prompt\": \"a\"}",
            ),
            404,
            "gpt-9",
        ),
        (
            "a bad field",
            post_json(url, "/v1/completions", "{\"prompt\": \"a\", \"top_p\": 2}"),
            400,
            "top_p",
        ),
        (
            "too many sequences",
            post_json(
                url,
                "/v1/completions",
                "{\"prompt\": [\"a\", \"b\", \"c\"], \"n\": 40, \"max_tokens\": 1}",
            ),
            413,
            "120 sequences",
        ),
        (
            "too many tokens",
            post_json(
                url,
                "/v1/completions",
                "{\"prompt\": \"a b c\", \"n\": 50, \"max_tokens\": 200}",
            ),
            413,
            "--max-tokens-per-request",
        ),
        (
            "no reward model",
            post_json(url, "/classify", "{\"input\": \"a\"}"),
            404,
            "--reward-model",
        ),
    ];
    for (what, answer, status, says) in &cases {
        eprintln!("{what}: {}", answer.1);
        assert_openai_error(answer, *status, says);
    }
    // The server still answers.
    let (status, body) = post_json(
        url,
        "/v1/completions",
        "{\"prompt\": \"a\", \"n\": 2, \"max_tokens\": 3}",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
}

#[test]
fn a_request_too_large_is_refused_and_the_server_goes_on() {
    // The default caps (from the free memory): 2,000 prompts x n = 4,096 is 8.2 million
    // sequences, which the server refuses (it used to abort) and then serves the next request.
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "huge", &[], &[]);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("request caps:"), "{log}");
    let prompts = vec!["\"a\""; 2000].join(",");
    let answer = post_json(
        &server.url,
        "/v1/completions",
        &format!("{{\"prompt\": [{prompts}], \"n\": 4096, \"max_tokens\": 16}}"),
    );
    assert_openai_error(&answer, 413, "8192000 sequences");
    let (status, body) = post_json(&server.url, "/v1/completions", "{\"prompt\": \"a\"}");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn work_stops_when_its_clients_go_and_busy_servers_answer_429() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    // One sequence at a time: a request of 2,380 x 250 tokens would take minutes.
    let server = Server::start(
        tmp.path(),
        "cancel",
        &["--batch-size", "1", "--max-tokens-per-request", "600000"],
        &[],
    );
    let host = server.url.strip_prefix("http://").unwrap().to_string();
    let body = "{\"prompt\": \"a\", \"n\": 2380, \"max_tokens\": 250, \"seed\": 3}";
    let open = || {
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        s
    };
    // Two long requests (2 prompt tokens with the BOS, so 2,380 x 252 = 599,760 tokens each)
    // hold the in-flight budget (twice the cap) but for 480 tokens.
    let a = open();
    let b = open();
    std::thread::sleep(Duration::from_millis(500));
    let answer = post_json(
        &server.url,
        "/v1/completions",
        "{\"prompt\": \"a\", \"n\": 2, \"max_tokens\": 250}",
    );
    assert_openai_error(&answer, 429, "retry");
    // Their clients go: the work stops between decode steps, and the budget is given back.
    drop(a);
    drop(b);
    let started = Instant::now();
    let (status, body) = post_json(
        &server.url,
        "/v1/completions",
        "{\"prompt\": \"a\", \"max_tokens\": 250, \"seed\": 1}",
    );
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(
        waited < Duration::from_secs(30),
        "the next request waited {waited:?} for work nobody reads"
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("cancelled=true"), "{log}");
}

#[test]
fn slow_headers_time_out_and_connections_beyond_the_limit_wait() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        "slow",
        &["--header-read-timeout", "3", "--max-connections", "2"],
        &[],
    );
    let host = server.url.strip_prefix("http://").unwrap().to_string();
    // A client that never finishes its headers.
    let slow = || {
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (s, Instant::now())
    };
    let health = || {
        let started = Instant::now();
        let (status, _) = exchange(&server.url, "GET /health HTTP/1.1", b"");
        assert_eq!(status, 200);
        started.elapsed()
    };
    let (mut first, t0) = slow();
    // One slot is held: the other still serves, at once.
    for _ in 0..3 {
        let took = health();
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
    // Both held: the next connection waits until the first slow one is dropped.
    let (mut second, _) = slow();
    let took = health();
    assert!(
        took > Duration::from_millis(1000),
        "served at once: {took:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    // The slow clients were closed by the server after the timeout (EOF, no answer).
    let mut buf = Vec::new();
    let n = first
        .read_to_end(&mut buf)
        .expect("closed before the client's own timeout");
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    let _ = second.read_to_end(&mut buf).expect("closed");
}

#[test]
fn the_scale_out_docs_score_command_runs() {
    // docs/scale-out.md: `sweetspot score --recipe recipe.toml --input samples.jsonl -o
    // scored.jsonl`, the samples from elsewhere (a batch import), the reward from the recipe.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recipe = recipe(dir, "doc", &native_sampler(0.8), &seq_cls_native(), 2);
    let o = Command::new(bin())
        .current_dir(dir)
        .args(["-q", "generate", "--recipe"])
        .arg(&recipe)
        .args(["-o", "samples.jsonl"])
        .output()
        .unwrap();
    assert_ok(&o);
    let o = Command::new(bin())
        .current_dir(dir)
        .args(["-q", "score", "--recipe"])
        .arg(&recipe)
        .args(["--input", "samples.jsonl", "-o", "scored.jsonl"])
        .output()
        .unwrap();
    assert_ok(&o);
    let scored = read_jsonl(&dir.join("scored.jsonl"));
    assert_eq!(scored.len(), 8);
    assert!(scored.iter().all(|r| r["reward"].is_f64()));
    // --input names the file read: a missing one is an error naming it.
    let o = Command::new(bin())
        .current_dir(dir)
        .args(["-q", "score", "--recipe"])
        .arg(&recipe)
        .args(["--input", "nothere.jsonl", "-o", "scored2.jsonl"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nothere.jsonl"), "{}", stderr(&o));
}

/// Settings a request leaves out come from the model's generation_config.json (vLLM's
/// `--generation-config auto`), or OpenAI's defaults with `--generation-config vllm`; its
/// `<|endoftext|>` stops a response either way; `repetition_penalty` and `min_p` are applied.
/// Each answer is the in-process draw with the settings so resolved.
#[test]
fn requests_take_the_models_generation_config_as_vllm_does() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = fixture("qwen25-genconfig");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("reference.json")).unwrap())
            .unwrap();
    let ids: Vec<u32> = reference["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let device = sweetspot_model::resolve_device("cpu").unwrap();
    let (model, tok) =
        sweetspot_model::load_causal_lm(&model_dir, &device, sweetspot_model::Precision::F32)
            .unwrap();
    let prompt = serde_json::to_string(&ids).unwrap();
    let draws = |params: sweetspot_model::generate::SamplingParams| {
        let reqs: Vec<_> = (0..4)
            .map(|i| sweetspot_model::generate::SeqRequest {
                prompt_ids: ids.clone(),
                seed: 9 + i,
            })
            .collect();
        sweetspot_model::generate::generate(&model, &reqs, tok.stop_ids(), &params, |_| {})
            .unwrap()
            .into_iter()
            .map(|g| g.tokens)
            .collect::<Vec<_>>()
    };
    let answer = |url: &str, extra: &str| {
        let (status, body) = post_json(
            url,
            "/v1/completions",
            &format!(
                "{{\"prompt\": {prompt}, \"n\": 4, \"seed\": 9, \"max_tokens\": 12, \
                 \"return_token_ids\": true{extra}}}"
            ),
        );
        assert_eq!(status, 200, "{body}");
        body["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                c["token_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect::<Vec<u32>>()
            })
            .collect::<Vec<_>>()
    };
    let file = sweetspot_model::generate::SamplingParams {
        repetition_penalty: 1.05,
        ..sweetspot_model::generate::SamplingParams::new(0.7, 0.8, 20, 12)
    };
    let auto = Server::start_model(tmp.path(), "auto", &model_dir, &[], &[]);
    let log = std::fs::read_to_string(&auto.log).unwrap();
    assert!(
        log.contains("temperature 0.7, top_p 0.8, top_k 20"),
        "{log}"
    );
    assert_eq!(answer(&auto.url, ""), draws(file));
    // What a request sets wins; min_p and repetition_penalty are applied.
    let set = sweetspot_model::generate::SamplingParams {
        repetition_penalty: 1.3,
        min_p: 0.2,
        ..sweetspot_model::generate::SamplingParams::new(1.0, 0.8, 20, 12)
    };
    assert_eq!(
        answer(
            &auto.url,
            ", \"temperature\": 1.0, \"repetition_penalty\": 1.3, \"min_p\": 0.2"
        ),
        draws(set)
    );
    drop(auto);
    let vllm = Server::start_model(
        tmp.path(),
        "vllm",
        &model_dir,
        &["--generation-config", "vllm"],
        &[],
    );
    let openai = sweetspot_model::generate::SamplingParams::new(1.0, 1.0, 0, 12);
    let got = answer(&vllm.url, "");
    assert_eq!(got, draws(openai));
    assert_ne!(got, draws(file));
}
