//! The linker pitfall: the `sweetspot` binary's registry must hold every plugin of every crate
//! under `plugins/`, and each plugin's example table must deserialize through typetag under the
//! same name.

mod common;

use common::*;
use std::collections::BTreeMap;

/// Package name and number of registrations (`#[sweetspot_core::plugin(...)]` attributes) of
/// each crate in `plugins/`.
fn workspace_plugins() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("plugins")).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let mut count = 0;
        let mut stack = vec![dir.join("src")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    count += std::fs::read_to_string(&p)
                        .unwrap()
                        .matches("#[sweetspot_core::plugin(")
                        .count();
                }
            }
        }
        out.insert(name, count);
    }
    out
}

#[test]
fn binary_registry_holds_every_workspace_plugin() {
    let o = sweetspot(["plugins", "--json"]);
    assert_ok(&o);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let expected = workspace_plugins();
    assert!(!expected.is_empty());
    for (krate, count) in &expected {
        assert!(*count > 0, "{krate} registers no plugin");
        let in_binary = listed
            .iter()
            .filter(|p| p["crate_name"] == krate.as_str())
            .count();
        assert_eq!(
            in_binary, *count,
            "{krate}: {count} registrations in the source, {in_binary} in the binary \
             (is the crate linked in sweetspot_cli::link_builtin_plugins?)"
        );
    }
    let strategies: Vec<&str> = listed
        .iter()
        .filter(|p| p["kind"] == "pair-strategy")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        strategies,
        vec!["grid", "max-min", "max-of-n-min-of-k", "sigma"]
    );
}

#[test]
fn every_example_table_deserializes_under_its_name() {
    let o = sweetspot(["plugins", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The inputs the recipes name exist (validate checks them); models are the fixtures.
    for f in ["x.jsonl", "p.jsonl", "s.jsonl"] {
        std::fs::write(tmp.path().join(f), "{}\n").unwrap();
    }
    let models = root().join("tests/fixtures/models");
    for p in &listed {
        let example = p["example"].as_str().unwrap();
        // An example's `model` points at a real model of its kind (the judge's Yes/No must be
        // one token each, as in SmolLM2's tokenizer).
        let model = match p["name"].as_str().unwrap() {
            "armorm" => models.join("armorm"),
            "seq-cls" | "skywork" => models.join("seq-cls"),
            "judge" => match smollm2() {
                Some(m) => m,
                None => continue,
            },
            _ => models.join("policy"),
        };
        let example: String = example
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("model =") {
                    format!("model = {model:?}")
                } else if l.trim_start().starts_with("tokenizer =") {
                    // The HTTP plugins render with a local tokenizer of the served model.
                    let of = if p["name"] == "http" {
                        "seq-cls"
                    } else {
                        "policy"
                    };
                    format!("tokenizer = {:?}", models.join(of))
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let recipe = match p["kind"].as_str().unwrap() {
            "pair-strategy" => format!(
                "[pairs]\ninput = \"x.jsonl\"\noutput = \"out\"\n\n[[pairs.strategies]]\n{example}\n"
            ),
            "sampler" => format!(
                "[generate]\nprompts = \"p.jsonl\"\noutput = \"s.jsonl\"\nn = 2\n\n[sampler]\n{example}\n"
            ),
            // A pairwise judge compares two responses: its place is [eval.judge].
            "reward-model" if p["name"] == "pairwise-judge" => format!(
                "[sampler]\ntype = \"burn\"\nmodel = {policy:?}\n\n\
                 [generate]\nprompts = \"p.jsonl\"\nn = 2\n\n\
                 [reward]\ntype = \"seq-cls\"\nmodel = {seq_cls:?}\n\n[score]\n\n\
                 [pairs]\n[[pairs.strategies]]\ntype = \"max-min\"\n\n\
                 [train]\ndatasets = \"all\"\n[train.loss]\ntype = \"dpo\"\n\n\
                 [eval]\nprompts = \"p.jsonl\"\n\n[eval.judge]\n{example}\n",
                policy = models.join("policy"),
                seq_cls = models.join("seq-cls"),
            ),
            "reward-model" => format!(
                "[score]\ninput = \"s.jsonl\"\noutput = \"scored.jsonl\"\n\n[reward]\n{example}\n"
            ),
            "preference-loss" => format!(
                "[train]\npairs = \"p.jsonl\"\npolicy = {:?}\noutput = \"run\"\n\n[train.loss]\n{example}\n",
                models.join("policy")
            ),
            other => panic!("no recipe table for kind {other} yet"),
        };
        let path = tmp
            .path()
            .join(format!("{}.toml", p["name"].as_str().unwrap()));
        std::fs::write(&path, recipe).unwrap();
        let o = sweetspot(["validate".as_ref(), path.as_os_str()]);
        assert!(o.status.success(), "{}: {}", p["name"], stderr(&o));
    }
}

#[test]
fn plugins_lists_by_kind() {
    let o = sweetspot(["plugins"]);
    assert_ok(&o);
    let text = stdout(&o);
    for kind in [
        "sampler",
        "reward-model",
        "pair-strategy",
        "preference-loss",
    ] {
        assert!(text.contains(&format!("{kind} (")), "{text}");
    }
    assert!(text.contains("max-of-n-min-of-k"));
}
