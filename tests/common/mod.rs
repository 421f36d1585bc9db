//! Helpers for the end-to-end tests: run the real `sweetspot` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn example(rel: &str) -> PathBuf {
    root().join("examples").join(rel)
}

pub fn sweetspot<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_sweetspot(args, None)
}

/// [`sweetspot`] with its logs at `level` (the `-q` of the tests hides `info`).
pub fn sweetspot_logging<I, S>(level: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_sweetspot(args, Some(level))
}

fn run_sweetspot<I, S>(args: I, log: Option<&str>) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    // SWEETSPOT_BIN runs the tests against another build (an older release, to show which
    // cases it fails).
    let bin =
        std::env::var_os("SWEETSPOT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_sweetspot").into());
    let mut c = Command::new(bin);
    c.arg("-q").args(args);
    if let Some(level) = log {
        c.env("RUST_LOG", level);
    }
    c.output().expect("the sweetspot binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "failed: {}", stderr(o));
}

/// The process failed cleanly: the given exit code, an `error:` line, no panic.
pub fn assert_clean_failure(o: &Output, code: i32) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.starts_with("error: "), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
    err
}

/// Files in `dir`, sorted; empty when `dir` does not exist.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// SmolLM2-135M-Instruct's GGUF (scripts/fetch_smollm2.sh). `None`, after saying so, when it is
/// absent, except under CI, where it must be there.
pub fn smollm2() -> Option<PathBuf> {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI",
        p.display()
    );
    eprintln!("skipping: {} not found", p.display());
    None
}

/// A headless Chromium (`chromium-headless-shell`, `chromium`, `chromium-browser`,
/// `google-chrome`). `None`, after saying so, when there is none, except under CI, where it
/// must be there.
pub fn browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
        "google-chrome",
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no headless Chromium under CI (apt-get install chromium-headless-shell)"
    );
    eprintln!("skipping the browser check: no Chromium found");
    None
}

/// The paper recipes' 8B models, as tests/fixtures/configs holds their `config.json`.
pub const MODELS: [&str; 2] = ["Meta-Llama-3-8B-Instruct", "ArmoRM-Llama3-8B-v0.1"];

/// `<dir>/examples/recipes/<the paper recipes and their accelerate config>` and
/// `<dir>/models/<name>/config.json`, as the recipes' `../../models/...` paths expect. Returns
/// the recipes' folder.
pub fn config_only_tree(dir: &Path, models: &[&str]) -> PathBuf {
    let recipes = dir.join("examples/recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    for f in std::fs::read_dir(example("recipes")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "toml" || e == "yaml") {
            std::fs::copy(&f, recipes.join(f.file_name().unwrap())).unwrap();
        }
    }
    for m in models {
        let to = dir.join("models").join(m);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(
            root()
                .join("tests/fixtures/configs")
                .join(m)
                .join("config.json"),
            to.join("config.json"),
        )
        .unwrap();
    }
    recipes
}
