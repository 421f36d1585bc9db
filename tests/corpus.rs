//! The bad-input corpus (`tests/corpus/cases.toml`): every case runs the real binary and must
//! fail cleanly: its exit code, an `error:` line holding every expected fragment (file, line,
//! field or key), no panic, and nothing left in its folder but its inputs. Recipe cases are
//! also run with `sweetspot run`, which must refuse them the same way before any stage starts.
//! Large and binary inputs (model files with lying headers) are generated here at test time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    kind: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    patch: Option<String>,
    #[serde(default)]
    mutation: Option<String>,
    code: i32,
    expect: Vec<String>,
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/models")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Every file and folder under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(s(p.strip_prefix(dir).unwrap()));
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Copies the folder `from` into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A long prompt: more tokens than the policy fixture's 256 positions.
fn too_long() -> String {
    "the quick brown fox jumps over the lazy dog ".repeat(60)
}

/// Runs one case in `dir`; returns the process output, or `None` when the case cannot run here
/// (a GGUF case without SmolLM2, outside CI).
fn run_case(c: &Case, dir: &Path) -> Option<Output> {
    let input = dir.join("in.jsonl");
    let content = c
        .content
        .clone()
        .map(|t| t.replace("TOO_LONG", &too_long()));
    if let Some(text) = &content
        && c.kind != "recipe"
    {
        std::fs::write(&input, text).unwrap();
    }
    let out = |default: &str| s(&dir.join(c.output.as_deref().unwrap_or(default)));
    let mut args: Vec<String> = match c.kind.as_str() {
        "pairs" => vec![
            "pairs".into(),
            "-i".into(),
            s(&input),
            "-s".into(),
            "max-min".into(),
            "-o".into(),
            out("out"),
        ],
        "stats" if content.is_some() => vec!["stats".into(), s(&input)],
        "stats" => vec!["stats".into()],
        "score" => vec![
            "score".into(),
            "-i".into(),
            s(&input),
            "-o".into(),
            out("out.jsonl"),
            "-t".into(),
            "seq-cls".into(),
            "-m".into(),
            s(&fixtures().join("seq-cls")),
        ],
        "generate" => vec![
            "generate".into(),
            "-m".into(),
            s(&fixtures().join("policy")),
            "-p".into(),
            s(&input),
            "-o".into(),
            out("out.jsonl"),
            "-n".into(),
            "2".into(),
            "--max-new-tokens".into(),
            "4".into(),
        ],
        "train" => vec![
            "train".into(),
            "--pairs".into(),
            s(&input),
            "-m".into(),
            s(&fixtures().join("policy")),
            "-o".into(),
            out("run"),
        ],
        "recipe" => {
            let text = content
                .as_deref()
                .unwrap()
                .replace("{fixtures}", &s(&fixtures()))
                .replace("{examples}", &s(&root().join("examples")))
                .replace("{dir}", &s(dir));
            // The recipe's own lines are what the errors count: no leading newline.
            let text = text.strip_prefix('\n').unwrap_or(&text);
            std::fs::write(dir.join("recipe.toml"), text).unwrap();
            vec!["validate".into(), s(&dir.join("recipe.toml"))]
        }
        "config" => {
            let model = dir.join("model");
            copy_dir(&fixtures().join("policy"), &model);
            let patch = c.patch.as_deref().unwrap();
            let text = match patch.strip_prefix("RAW:") {
                Some(raw) => raw.to_string(),
                None => {
                    let mut cfg: serde_json::Value = serde_json::from_str(
                        &std::fs::read_to_string(model.join("config.json")).unwrap(),
                    )
                    .unwrap();
                    let patch: serde_json::Value = serde_json::from_str(patch).unwrap();
                    for (k, v) in patch.as_object().unwrap() {
                        let obj = cfg.as_object_mut().unwrap();
                        if v.is_null() {
                            obj.remove(k);
                        } else {
                            obj.insert(k.clone(), v.clone());
                        }
                    }
                    serde_json::to_string_pretty(&cfg).unwrap()
                }
            };
            std::fs::write(model.join("config.json"), text).unwrap();
            generate_with(&model, dir)
        }
        "safetensors" => {
            let model = dir.join("model");
            copy_dir(&fixtures().join("policy"), &model);
            mutate_safetensors(
                &model.join("model.safetensors"),
                c.mutation.as_deref().unwrap(),
            );
            generate_with(&model, dir)
        }
        "gguf" => {
            let src = smollm2()?;
            let model = dir.join("model.gguf");
            let mut bytes = std::fs::read(src).unwrap();
            mutate_gguf(&mut bytes, c.mutation.as_deref().unwrap());
            std::fs::write(&model, bytes).unwrap();
            generate_with(&model, dir)
        }
        other => panic!("{}: unknown kind `{other}`", c.name),
    };
    // A flag the command already has takes the case's value; others are appended.
    let mut extra = c.args.iter();
    while let Some(a) = extra.next() {
        match args.iter().position(|x| x == a) {
            Some(i) if a.starts_with('-') && !a.contains('=') => {
                args[i + 1] = extra.next().cloned().unwrap_or_default();
            }
            _ => args.push(a.clone()),
        }
    }
    Some(sweetspot(&args))
}

fn generate_with(model: &Path, dir: &Path) -> Vec<String> {
    let prompts = root().join("examples/prompts.jsonl");
    vec![
        "generate".into(),
        "-m".into(),
        s(model),
        "-p".into(),
        s(&prompts),
        "-o".into(),
        s(&dir.join("out.jsonl")),
        "-n".into(),
        "1".into(),
        "--max-new-tokens".into(),
        "2".into(),
    ]
}

fn mutate_safetensors(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    match how {
        "header-length-huge" => bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes()),
        "header-not-json" => bytes[8..8 + n].fill(b'{'),
        "offsets-past-end" | "shape-overflow" => {
            let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            let entry = header["model.embed_tokens.weight"].as_object_mut().unwrap();
            if how == "offsets-past-end" {
                entry.insert("data_offsets".into(), serde_json::json!([0u64, 1u64 << 40]));
            } else {
                entry.insert("shape".into(), serde_json::json!([u64::MAX, 16]));
            }
            let text = serde_json::to_vec(&header).unwrap();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend(text);
            out.extend(&bytes[8 + n..]);
            bytes = out;
        }
        "truncated" => bytes.truncate(8 + n + 100),
        other => panic!("unknown safetensors mutation {other}"),
    }
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites one header value of a GGUF file in place (a metadata key's integer value, the tensor
/// count, the magic), or truncates it.
fn mutate_gguf(bytes: &mut Vec<u8>, how: &str) {
    match how {
        "truncated" => bytes.truncate(bytes.len() / 2),
        "magic" => bytes[..4].copy_from_slice(b"GGML"),
        "tensor_count=huge" => bytes[8..16].copy_from_slice(&(1u64 << 50).to_le_bytes()),
        rename if rename.starts_with("rename:") => {
            // Renames a key in place (same length), keeping its value.
            let (from, to) = rename["rename:".len()..].split_once('=').unwrap();
            assert_eq!(from.len(), to.len(), "renames keep the length");
            let at = bytes
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap_or_else(|| panic!("{from} not in the GGUF"));
            bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
        }
        kv => {
            let (key, value) = kv.split_once('=').unwrap();
            let value: u64 = value.parse().unwrap();
            // The key is stored as <u64 length><bytes>, then a u32 type, then the value.
            let mut needle = (key.len() as u64).to_le_bytes().to_vec();
            needle.extend(key.as_bytes());
            let at = bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap_or_else(|| panic!("{key} not in the GGUF"));
            let ty_at = at + needle.len();
            let ty = u32::from_le_bytes(bytes[ty_at..ty_at + 4].try_into().unwrap());
            let v = ty_at + 4;
            match ty {
                4 | 5 => bytes[v..v + 4].copy_from_slice(&(value as u32).to_le_bytes()),
                10 | 11 => bytes[v..v + 8].copy_from_slice(&value.to_le_bytes()),
                other => panic!("{key}: GGUF type {other} is not an integer"),
            }
        }
    }
}

#[test]
fn every_bad_input_fails_cleanly_and_leaves_nothing() {
    let text = std::fs::read_to_string(root().join("tests/corpus/cases.toml")).unwrap();
    let corpus: Corpus = toml::from_str(&text).unwrap();
    assert!(corpus.case.len() >= 100, "{} cases", corpus.case.len());
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in &corpus.case {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let Some(o) = run_case(c, dir) else {
            continue;
        };
        // What was there before the command ran is the case's input; nothing may be added.
        let err = stderr(&o);
        let mut problems = Vec::new();
        if o.status.code() != Some(c.code) {
            problems.push(format!("exit {:?}, expected {}", o.status.code(), c.code));
        }
        if !err.starts_with("error: ") || err.contains("panicked") {
            problems.push("not one clean `error:` line".to_string());
        }
        for want in &c.expect {
            if !err.contains(want.as_str()) {
                problems.push(format!("message lacks {want:?}"));
            }
        }
        let left: Vec<String> = tree(dir)
            .into_iter()
            .filter(|f| {
                !(f == "in.jsonl"
                    || f == "recipe.toml"
                    || f == "model.gguf"
                    || f == "model"
                    || f.starts_with("model/"))
            })
            .collect();
        if !left.is_empty() {
            problems.push(format!("left behind: {left:?}"));
        }
        if c.kind == "recipe" {
            // `run` refuses the same recipe before any stage starts, leaving nothing.
            let o = sweetspot(["run".to_string(), s(&dir.join("recipe.toml"))]);
            if o.status.code() != Some(c.code) || stderr(&o) != err {
                problems.push(format!("`run` differs from `validate`: {}", stderr(&o)));
            }
            if tree(dir) != vec!["recipe.toml".to_string()] {
                problems.push(format!("`run` left {:?}", tree(dir)));
            }
        }
        ran += 1;
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n    stderr: {}",
                c.name,
                problems.join("; "),
                err.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} corpus cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{ran} corpus cases passed");
}
