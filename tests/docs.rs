//! Every shell command of README.md and docs/*.md runs (on the fixtures, with the built binary)
//! or is listed with its reason in docs/commands.toml, so none drifts from the CLI. The rules
//! are at the top of docs/commands.toml.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{root, smollm2};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    paths: BTreeMap<String, String>,
    sizes: BTreeMap<String, String>,
    #[serde(default)]
    skip: Vec<Listed>,
    #[serde(default)]
    stand_in: Vec<Listed>,
    #[serde(default)]
    expect_failure: Vec<Failing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Listed {
    command: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Failing {
    command: String,
    reason: String,
    says: String,
}

/// A command of the docs: where it is and its text (one line, single spaces, no comment).
struct Cmd {
    at: String,
    text: String,
}

/// The commands of one fenced block.
struct Block {
    at: String,
    commands: Vec<Cmd>,
}

/// What a fenced block holds.
#[derive(Clone, Copy)]
enum Kind {
    /// ```sh, ```bash, ```shell: every line is a command.
    Shell,
    /// No language: the lines that start with `sweetspot ` are commands.
    Untagged,
    /// Another language: none.
    Other,
}

/// `line` without a trailing `# comment` (a `#` at the start or after a space).
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'#' && (i == 0 || b[i - 1] == b' ') {
            return &line[..i];
        }
    }
    line
}

/// The command blocks of a Markdown file: ```sh (or bash, shell) blocks, every command; untagged
/// blocks, the lines that start with `sweetspot `.
fn blocks(file: &Path, name: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    // The open block: its first line, its kind, its lines (number, text).
    type Open = (usize, Kind, Vec<(usize, String)>);
    let mut open: Option<Open> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(tag) = t.strip_prefix("```") {
            match open.take() {
                Some((start, kind, lines)) => {
                    let mut commands = Vec::new();
                    let mut cur: Option<(usize, String)> = None;
                    for (n, l) in lines {
                        // A synopsis's options wrapped onto indented lines continue it.
                        if l.trim_start().starts_with('[')
                            && let Some(last) = commands.last_mut()
                        {
                            let last: &mut Cmd = last;
                            last.text.push(' ');
                            last.text
                                .push_str(&l.split_whitespace().collect::<Vec<_>>().join(" "));
                            continue;
                        }
                        let body = strip_comment(&l).trim_end();
                        let (body, more) = match body.strip_suffix('\\') {
                            Some(b) => (b, true),
                            None => (body, false),
                        };
                        // An untagged block's commands start at the margin (not a
                        // diagram's indented label).
                        if cur.is_none() && matches!(kind, Kind::Untagged) && l.starts_with(' ') {
                            continue;
                        }
                        let c = cur.get_or_insert((n, String::new()));
                        c.1.push(' ');
                        c.1.push_str(body);
                        if !more {
                            let (n, s) = cur.take().unwrap();
                            let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
                            let wanted = match kind {
                                Kind::Shell => true,
                                Kind::Untagged => s.starts_with("sweetspot "),
                                Kind::Other => false,
                            };
                            if !s.is_empty() && wanted {
                                commands.push(Cmd {
                                    at: format!("{name}:{n}"),
                                    text: s,
                                });
                            }
                        }
                    }
                    if !commands.is_empty() {
                        out.push(Block {
                            at: format!("{name}:{start}"),
                            commands,
                        });
                    }
                }
                None => {
                    let kind = match tag.trim() {
                        "sh" | "bash" | "shell" => Kind::Shell,
                        "" => Kind::Untagged,
                        _ => Kind::Other,
                    };
                    open = Some((i + 1, kind, Vec::new()));
                }
            }
        } else if let Some((_, _, lines)) = open.as_mut() {
            lines.push((i + 1, line.to_string()));
        }
    }
    out
}

/// The docs' command blocks, README.md first, then docs/*.md by name.
fn all_blocks() -> Vec<Block> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .iter()
        .flat_map(|f| {
            let name = f.strip_prefix(root()).unwrap().display().to_string();
            blocks(f, &name)
        })
        .collect()
}

fn bin() -> PathBuf {
    std::env::var_os("SWEETSPOT_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_sweetspot").into())
        .into()
}

/// A `sweetspot serve` on loopback; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts `sweetspot serve ARGS` (ARGS with `--port 0`) and waits for its first line.
    fn start(args: &[String], dir: &Path) -> Result<Server, String> {
        let log = dir.join(format!("serve-{}.log", std::process::id()));
        let mut child = Command::new(bin())
            .arg("-q")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .map_err(|e| format!("starting sweetspot serve: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(60));
        let url = first
            .ok()
            .and_then(|l| l.strip_prefix("listening on ").map(str::to_string));
        match url {
            Some(url) => Ok(Server { child, url }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "sweetspot serve did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ))
            }
        }
    }

    /// POSTs a JSON body; (status, JSON answer).
    fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let host = self.url.strip_prefix("http://").unwrap();
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One block's scratch folder and the server its fixtures may name.
struct Scratch {
    dir: tempfile::TempDir,
    server: Option<Server>,
}

impl Scratch {
    /// The server standing in for vLLM: `sweetspot serve` of the tiny fixture policy.
    fn url(&mut self) -> Result<String, String> {
        if self.server.is_none() {
            let args: Vec<String> = [
                "serve",
                &root()
                    .join("tests/fixtures/models/policy")
                    .display()
                    .to_string(),
                "--port",
                "0",
                "--served-model-name",
                "policy",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            self.server = Some(Server::start(&args, self.dir.path())?);
        }
        Ok(self.server.as_ref().unwrap().url.clone())
    }
}

/// The arguments of a `sweetspot` command as the test passes them.
fn arguments(table: &Table, text: &str, scratch: &mut Scratch) -> Result<Vec<String>, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(
        !text.contains(['"', '\'', '$', '|', ';', '&', '>', '<']),
        "{text}: quoting, variables and redirections are not supported by this harness"
    );
    let rootd = root().display().to_string();
    let mut args = Vec::new();
    for (i, w) in words.iter().enumerate().skip(1) {
        let arg = if let Some(v) = table.sizes.get(words[i - 1]) {
            v.clone()
        } else if let Some(v) = table.paths.get(*w) {
            if let Some(fixture) = v.strip_prefix("copy:") {
                let mut t = std::fs::read_to_string(root().join(fixture))
                    .map_err(|e| format!("{fixture}: {e}"))?
                    .replace("{root}", &rootd);
                if t.contains("{url}") {
                    t = t.replace("{url}", &scratch.url()?);
                }
                let to = scratch.dir.path().join(w);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).unwrap();
                }
                std::fs::write(to, t).unwrap();
                w.to_string()
            } else {
                v.replace("{root}", &rootd)
            }
        } else if ["examples/", "models/", "scripts/", "tests/"]
            .iter()
            .any(|p| w.starts_with(p))
        {
            format!("{rootd}/{w}")
        } else {
            w.to_string()
        };
        args.push(arg);
    }
    Ok(args)
}

fn run_bin(args: &[String], dir: &Path) -> Output {
    Command::new(bin())
        .arg("-q")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the sweetspot binary runs")
}

fn tail(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr);
    let e = e.trim();
    e[e.len().saturating_sub(1500)..].to_string()
}

/// Runs one `sweetspot` command; `Err` says why it failed.
fn run_command(table: &Table, text: &str, scratch: &mut Scratch) -> Result<(), String> {
    let dir = scratch.dir.path().to_path_buf();
    // A synopsis: every option it names is one the subcommand has.
    if text.split_whitespace().any(|w| w.starts_with('[')) {
        let sub = text.split_whitespace().nth(1).unwrap_or("").to_string();
        let help = run_bin(&[sub.clone(), "--help".into()], &dir);
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        let unknown: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
            .filter(|w| w.starts_with("--"))
            .filter(|w| !help.contains(&format!("{w} ")) && !help.contains(&format!("{w}\n")))
            .collect();
        return if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("`sweetspot {sub}` has no option {unknown:?}"))
        };
    }
    let args = arguments(table, text, scratch)?;
    if args[0] == "serve" {
        // A server: it must load its models and listen; then it is stopped.
        return Server::start(&args, &dir).map(drop);
    }
    let o = run_bin(&args, &dir);
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("exit {:?}: {}", o.status.code(), tail(&o)))
    }
}

/// `vllm run-batch`'s stand-in: each request line of `input` sent to the scratch's server, the
/// answers written to `output` in the OpenAI batch output shape.
fn run_batch(scratch: &mut Scratch, input: &str, output: &str) -> Result<(), String> {
    scratch.url()?;
    let dir = scratch.dir.path();
    let text = std::fs::read_to_string(dir.join(input)).map_err(|e| format!("{input}: {e}"))?;
    let server = scratch.server.as_ref().unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let req: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let (status, body) =
            server.post(req["url"].as_str().unwrap_or(""), &req["body"].to_string());
        let row = serde_json::json!({
            "id": format!("batch-{i}"),
            "custom_id": req["custom_id"],
            "response": {"status_code": status, "request_id": format!("r{i}"), "body": body},
            "error": null,
        });
        out.push_str(&format!("{row}\n"));
    }
    std::fs::write(dir.join(output), out).map_err(|e| e.to_string())
}

#[test]
fn every_command_in_the_docs_runs_or_says_why_not() {
    let table_path = root().join("docs/commands.toml");
    let table: Table = toml::from_str(&std::fs::read_to_string(&table_path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", table_path.display()));
    for l in table.skip.iter().chain(&table.stand_in) {
        assert!(!l.reason.trim().is_empty(), "{}: no reason", l.command);
    }
    let blocks = all_blocks();
    let mut problems: Vec<String> = Vec::new();
    let mut ran = 0usize;
    let mut used: Vec<&str> = Vec::new();
    for block in &blocks {
        let needs_smollm2 = block
            .commands
            .iter()
            .any(|c| c.text.starts_with("sweetspot ") && c.text.contains("models/SmolLM2-"));
        if needs_smollm2 && smollm2().is_none() {
            eprintln!("{}: skipped, the SmolLM2 GGUF is not in models/", block.at);
            for c in &block.commands {
                used.extend(
                    table
                        .skip
                        .iter()
                        .chain(&table.stand_in)
                        .map(|l| l.command.as_str())
                        .chain(table.expect_failure.iter().map(|f| f.command.as_str()))
                        .filter(|s| *s == c.text),
                );
            }
            continue;
        }
        let mut scratch = Scratch {
            dir: tempfile::tempdir().unwrap(),
            server: None,
        };
        for c in &block.commands {
            if let Some(s) = table.skip.iter().find(|s| s.command == c.text) {
                used.push(&s.command);
                eprintln!("{}: skipped ({}): {}", c.at, s.reason, c.text);
                continue;
            }
            if let Some(s) = table.stand_in.iter().find(|s| s.command == c.text) {
                used.push(&s.command);
                let w: Vec<&str> = c.text.split_whitespace().collect();
                let flag = |f: &str| w.iter().position(|x| *x == f).map(|i| w[i + 1]);
                let result = match (w.get(1), flag("-i"), flag("-o")) {
                    (Some(&"run-batch"), Some(i), Some(o)) => run_batch(&mut scratch, i, o),
                    _ => Err("no stand-in for this command".into()),
                };
                if let Err(e) = result {
                    problems.push(format!("{}: {}: stand-in failed: {e}", c.at, c.text));
                }
                continue;
            }
            if let Some(f) = table.expect_failure.iter().find(|f| f.command == c.text) {
                used.push(&f.command);
                match run_command(&table, &c.text, &mut scratch) {
                    Ok(()) => problems.push(format!(
                        "{}: {}: runs now; take it out of [[expect_failure]] in \
                         docs/commands.toml ({})",
                        c.at, c.text, f.reason
                    )),
                    Err(e) if e.contains(&f.says) => {
                        eprintln!("{}: fails as expected ({}): {}", c.at, f.reason, c.text)
                    }
                    Err(e) => problems.push(format!(
                        "{}: {}: fails, but not saying {:?}: {e}",
                        c.at, c.text, f.says
                    )),
                }
                continue;
            }
            if !c.text.starts_with("sweetspot ") {
                problems.push(format!(
                    "{}: `{}` is neither run nor listed in docs/commands.toml",
                    c.at, c.text
                ));
                continue;
            }
            match run_command(&table, &c.text, &mut scratch) {
                Ok(()) => ran += 1,
                Err(e) => problems.push(format!("{}: `{}` failed: {e}", c.at, c.text)),
            }
        }
    }
    // Every entry of the table names a command of the docs.
    for listed in table
        .skip
        .iter()
        .chain(&table.stand_in)
        .map(|l| l.command.as_str())
        .chain(table.expect_failure.iter().map(|f| f.command.as_str()))
    {
        if !used.contains(&listed) {
            problems.push(format!(
                "docs/commands.toml lists `{listed}`, which no doc has (any more)"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    eprintln!("{ran} doc commands ran");
    assert!(ran >= 10, "only {ran} doc commands ran");
}

/// The extraction itself: continuation lines join, comments go, untagged blocks give only
/// their `sweetspot` lines, other languages nothing.
#[test]
fn commands_are_read_from_the_blocks_as_a_shell_would() {
    let tmp = tempfile::tempdir().unwrap();
    let md = tmp.path().join("x.md");
    std::fs::write(
        &md,
        "text\n```sh\nsweetspot a -x 1 \\\n    -y 2   # two\n# only a comment\ncargo b\n```\n\
         ```\nerror: x\nsweetspot c\n  sweetspot (a diagram)\n```\n```toml\nsweetspot = 1\n```\n",
    )
    .unwrap();
    let b = blocks(&md, "x.md");
    let got: Vec<(&str, &str)> = b
        .iter()
        .flat_map(|b| b.commands.iter().map(|c| (c.at.as_str(), c.text.as_str())))
        .collect();
    assert_eq!(
        got,
        [
            ("x.md:3", "sweetspot a -x 1 -y 2"),
            ("x.md:6", "cargo b"),
            ("x.md:10", "sweetspot c")
        ]
    );
}

/// Lists in the docs that could drift from the code: the execution settings docs/plugins.md
/// gives, every workspace crate in docs/architecture.md's map, every registered plugin in the
/// recipe reference.
#[test]
fn docs_lists_match_the_code() {
    let read = |rel: &str| std::fs::read_to_string(root().join(rel)).unwrap();
    let plugins_md = read("docs/plugins.md");
    let row = plugins_md
        .lines()
        .find(|l| l.trim_start().starts_with("| `execution_settings()`"))
        .expect("docs/plugins.md has the execution_settings row");
    for key in sweetspot::core::EXECUTION_SETTINGS {
        assert!(
            row.contains(&format!("`{key}`")),
            "docs/plugins.md's execution settings leave out `{key}`"
        );
    }
    let listed = row.matches('`').count() / 2;
    // The method, the constant's name and the settings: nothing more.
    assert_eq!(
        listed,
        2 + sweetspot::core::EXECUTION_SETTINGS.len(),
        "docs/plugins.md lists execution settings the code does not have: {row}"
    );
    let architecture = read("docs/architecture.md");
    for dir in ["crates", "plugins"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                architecture.contains(&format!("### `{dir}/{name}`")),
                "docs/architecture.md has no section for {dir}/{name}"
            );
        }
    }
    sweetspot::cli::link_builtin_plugins();
    let recipes = read("docs/recipes.md");
    for p in sweetspot::core::registry::plugins() {
        assert!(
            recipes.contains(&format!("`{}`", p.name))
                || recipes.contains(&format!("\"{}\"", p.name)),
            "docs/recipes.md does not name the {} `{}`",
            p.kind.noun(),
            p.name
        );
    }
}
