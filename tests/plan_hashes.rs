//! Node identity hashes are a promise to every run folder: a change that only moves code must
//! not change them (that would recompute every node of every run). The hashes below were
//! recorded from `sweetspot run --plan` on main before the typed plan (issue 25) and must not
//! move unless a change means to recompute (then bump `COMPUTATION` and record them again).
//! New kinds of node are added to the lists (the shared reference node of each round came with
//! issue 26); the hashes of the nodes that were there stay.
//!
//! Every recipe here reads only small files (tiny fixture models, prompts), which a node's
//! fingerprint hashes by content, so the hashes are the same on every machine and checkout.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures/models")
        .join(name)
        .to_string_lossy()
        .replace('\\', "/")
}

/// The quickstart's recipe with its models replaced by the fixture policy (and the pairwise
/// judge switched on; the Yes/No judge is a sequence classifier here, the fixture's tiny
/// vocabulary having no one-token `Yes`), in a scratch folder with the quickstart's prompt files.
fn quickstart(dir: &Path) -> PathBuf {
    for f in ["prompts.jsonl", "eval.jsonl"] {
        std::fs::copy(example("quickstart").join(f), dir.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(example("quickstart/recipe.toml")).unwrap();
    let model = fixture("policy");
    let text = text
        .replace("# [eval.judge]", "[eval.judge]")
        .replace("# type = \"pairwise-judge\"", "type = \"pairwise-judge\"")
        .replace("# model = \"../../models/", "model = \"../../models/")
        .replace(
            "type = \"judge\"\nmodel = \"../../models/SmolLM2-135M-Instruct.Q4_1.gguf\"",
            &format!("type = \"seq-cls\"\nmodel = \"{}\"", fixture("seq-cls")),
        )
        .replace("../../models/SmolLM2-135M-Instruct.Q4_1.gguf", &model);
    assert!(
        text.contains("seq-cls"),
        "the quickstart's reward table moved"
    );
    assert!(
        text.contains("[eval.judge]"),
        "the quickstart's judge table moved"
    );
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The node ids `--plan` prints, in its order.
fn plan_ids(recipe: &Path) -> Vec<String> {
    let out = sweetspot(["run", "--plan", recipe.to_str().unwrap()]);
    assert_ok(&out);
    stdout(&out)
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let label = l.split("  ").next()?.trim().to_string();
            let start = l.find('[')?;
            let end = l[start..].find(']')? + start;
            Some(format!("{label} {}", &l[start + 1..end]))
        })
        .collect()
}

fn check(name: &str, recipe: &Path, expected: &[&str]) {
    let got = plan_ids(recipe);
    if got.iter().map(String::as_str).collect::<Vec<_>>() != expected {
        panic!(
            "{name}: the plan's node hashes moved (a run folder would recompute):\n{}",
            got.iter()
                .map(|s| format!("    \"{s}\",\n"))
                .collect::<String>()
        );
    }
}

#[test]
fn quickstart_hashes_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = quickstart(dir.path());
    check("quickstart", &recipe, QUICKSTART);
}

/// Two rounds (round 2 samples from a trained policy), several losses and seeds, a sampler
/// execution setting that must not count, the reward's batch size likewise.
#[test]
fn rounds_losses_and_seeds_hashes_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = quickstart(dir.path());
    let text = std::fs::read_to_string(&recipe).unwrap();
    let text = text
        .replace(
            "seed = 42\n",
            "seed = 42\nrounds = 2\ncontinue_with = \"max-min-n8-dpo-s2\"\n",
        )
        .replace("max_new_tokens = 32\n\n[generate]", "max_new_tokens = 32\nbatch_size = 3\ndevice = \"cpu\"\n\n[generate]")
        .replace("type = \"seq-cls\"\n", "type = \"seq-cls\"\nbatch_size = 5\n")
        .replace(
            "[train.loss]\ntype = \"dpo\"\nbeta = 0.1\n",
            "seeds = [1, 2]\n\n[[train.losses]]\ntype = \"dpo\"\nbeta = 0.1\n\n[[train.losses]]\ntype = \"ipo\"\nbeta = 0.2\n",
        );
    assert!(text.contains("[[train.losses]]") && text.contains("rounds = 2"));
    std::fs::write(&recipe, text).unwrap();
    check("rounds", &recipe, ROUNDS);
}

/// A remote sampler and a remote reward model (nothing contacted at plan time), training from
/// `[train] policy` (no eval: it answers through a local sampler).
#[test]
fn remote_plugins_hashes_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["prompts.jsonl", "eval.jsonl"] {
        std::fs::copy(example("quickstart").join(f), dir.path().join(f)).unwrap();
    }
    let model = fixture("policy");
    let text = format!(
        r#"[run]
name = "remote"
seed = 7

[sampler]
type = "openai"
endpoints = ["http://127.0.0.1:9", {{ url = "http://127.0.0.1:10", concurrency = 8 }}]
model = "served-policy"
tokenizer = "{model}"
temperature = 0.7
max_new_tokens = 16
timeout_s = 30

[generate]
prompts = "prompts.jsonl"
n = 4

[reward]
type = "http"
endpoints = ["http://127.0.0.1:11"]
model = "served-reward"
tokenizer = "{model}"
batch_size = 4

[score]

[pairs]

[[pairs.strategies]]
type = "sigma"
chosen = "max"
rejected = -2

[train]
policy = "{model}"
datasets = ["all"]
batch_size = 2
micro_batch_size = 2

[train.loss]
type = "simpo"
"#
    );
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(&recipe, text).unwrap();
    check("remote", &recipe, REMOTE);
}

const QUICKSTART: &[&str] = &[
    "generate generate-9e2a04b7d3c2e2c9",
    "score score-e0fe0d2f38a4defc",
    "pairs n8 pairs-4a1d01f030ba7400",
    "pairs n16 pairs-213c7426889bb10f",
    "reference reference-785045e211d2666e",
    "train grid_max_vs_-2-n8 train-b64737083669d4d4",
    "train max-min-n8 train-482c008e60689b6f",
    "train grid_max_vs_-2-n16 train-df8ce4eaab684062",
    "train max-min-n16 train-2867fbbc32dfb291",
    "eval generate base generate-64a87d114750f158",
    "eval score base score-75aad6892d1e6184",
    "eval generate grid_max_vs_-2-n8 generate-c90e6b289d5d7af4",
    "eval score grid_max_vs_-2-n8 score-ba7d774b8f86e964",
    "eval generate max-min-n8 generate-02cc59f85ee1585a",
    "eval score max-min-n8 score-0927f04d3e2fec65",
    "eval generate grid_max_vs_-2-n16 generate-e89b39073da3e85d",
    "eval score grid_max_vs_-2-n16 score-2be26d7e7a17fcd8",
    "eval generate max-min-n16 generate-046c09714ad1ca94",
    "eval score max-min-n16 score-ff3ac6bc074bb279",
    "eval pair grid_max_vs_-2-n8 generate-42a08704d5fc7ee9",
    "eval judge grid_max_vs_-2-n8 score-57444f85b996933e",
    "eval pair max-min-n8 generate-f4ff7468f64fd153",
    "eval judge max-min-n8 score-824a56dec1e43b35",
    "eval pair grid_max_vs_-2-n16 generate-1811cf937fdc6d34",
    "eval judge grid_max_vs_-2-n16 score-9322e85d052949f5",
    "eval pair max-min-n16 generate-4e3c512dc56d3940",
    "eval judge max-min-n16 score-743349cce6d9a457",
    "eval eval-559ebd8d1b1ccd45",
];
const ROUNDS: &[&str] = &[
    "generate generate-9e2a04b7d3c2e2c9",
    "score score-e0fe0d2f38a4defc",
    "pairs n8 pairs-4a1d01f030ba7400",
    "pairs n16 pairs-213c7426889bb10f",
    "reference reference-785045e211d2666e",
    "train grid_max_vs_-2-n8-dpo-s1 train-478107b8c364573f",
    "train grid_max_vs_-2-n8-dpo-s2 train-c2130e11683e0d7b",
    "train grid_max_vs_-2-n8-ipo-s1 train-d881ab8dfab11d30",
    "train grid_max_vs_-2-n8-ipo-s2 train-9ae160d3d1fcf577",
    "train max-min-n8-dpo-s1 train-f9219a1f48730c39",
    "train max-min-n8-dpo-s2 train-c2f16e9c310c2dc2",
    "train max-min-n8-ipo-s1 train-dc433d625ee33593",
    "train max-min-n8-ipo-s2 train-5ac226bb22a0c664",
    "train grid_max_vs_-2-n16-dpo-s1 train-8107ec64abab660a",
    "train grid_max_vs_-2-n16-dpo-s2 train-21c0d68996b09cb8",
    "train grid_max_vs_-2-n16-ipo-s1 train-056abe2ae34d28b5",
    "train grid_max_vs_-2-n16-ipo-s2 train-6174678b8b75fe0d",
    "train max-min-n16-dpo-s1 train-9a87a364c3f98e5e",
    "train max-min-n16-dpo-s2 train-7b57cb8f39519d21",
    "train max-min-n16-ipo-s1 train-a433bb888a96bf64",
    "train max-min-n16-ipo-s2 train-732c9593a41cd6b9",
    "r2 generate generate-f05557902ca5b03c",
    "r2 score score-35893a1b02df0d34",
    "r2 pairs n8 pairs-313de0701358f40c",
    "r2 pairs n16 pairs-8c26c419c8ac2594",
    "r2 reference reference-64900cfb4933961b",
    "r2 train grid_max_vs_-2-n8-dpo-s1 train-bdfda5658d041c89",
    "r2 train grid_max_vs_-2-n8-dpo-s2 train-482d36e625799435",
    "r2 train grid_max_vs_-2-n8-ipo-s1 train-ce9fb12a31fa58a5",
    "r2 train grid_max_vs_-2-n8-ipo-s2 train-5553644de726541e",
    "r2 train max-min-n8-dpo-s1 train-eab5e00efce3844c",
    "r2 train max-min-n8-dpo-s2 train-948425b96a96599f",
    "r2 train max-min-n8-ipo-s1 train-f605478337971a7d",
    "r2 train max-min-n8-ipo-s2 train-5ed6f5831bc13780",
    "r2 train grid_max_vs_-2-n16-dpo-s1 train-e9c58cdadaee187e",
    "r2 train grid_max_vs_-2-n16-dpo-s2 train-77e8b529e98b4249",
    "r2 train grid_max_vs_-2-n16-ipo-s1 train-106d31299094d185",
    "r2 train grid_max_vs_-2-n16-ipo-s2 train-5e4c48656c2e8459",
    "r2 train max-min-n16-dpo-s1 train-11e0b2c3f11f7ea5",
    "r2 train max-min-n16-dpo-s2 train-6848ed274e8dd7a3",
    "r2 train max-min-n16-ipo-s1 train-d2819dd4dbdd4835",
    "r2 train max-min-n16-ipo-s2 train-6180bfaf4bbca3c1",
    "eval generate base generate-64a87d114750f158",
    "eval score base score-75aad6892d1e6184",
    "eval generate r1/grid_max_vs_-2-n8-dpo-s1 generate-6bb3aa7e19124427",
    "eval score r1/grid_max_vs_-2-n8-dpo-s1 score-ab1e832e966766d5",
    "eval generate r1/grid_max_vs_-2-n8-dpo-s2 generate-fb44ffb60a0de61b",
    "eval score r1/grid_max_vs_-2-n8-dpo-s2 score-8cb56f866a67d6e8",
    "eval generate r1/grid_max_vs_-2-n8-ipo-s1 generate-240b9238774601cb",
    "eval score r1/grid_max_vs_-2-n8-ipo-s1 score-1d5a6649cfc3126d",
    "eval generate r1/grid_max_vs_-2-n8-ipo-s2 generate-b3e3872d1b6afba6",
    "eval score r1/grid_max_vs_-2-n8-ipo-s2 score-c9c4fecd24f3c871",
    "eval generate r1/max-min-n8-dpo-s1 generate-c004f8d92fc2df5a",
    "eval score r1/max-min-n8-dpo-s1 score-4b7470db2cd1d126",
    "eval generate r1/max-min-n8-dpo-s2 generate-0a30599db282d3be",
    "eval score r1/max-min-n8-dpo-s2 score-05a88cc7eb4da1b9",
    "eval generate r1/max-min-n8-ipo-s1 generate-dd53f4af804742cc",
    "eval score r1/max-min-n8-ipo-s1 score-98a254a69c11c870",
    "eval generate r1/max-min-n8-ipo-s2 generate-94ac7825d6905738",
    "eval score r1/max-min-n8-ipo-s2 score-a7e351cfe8477e7c",
    "eval generate r1/grid_max_vs_-2-n16-dpo-s1 generate-4b44c0a8144b8ef9",
    "eval score r1/grid_max_vs_-2-n16-dpo-s1 score-48188e830f8b4e9b",
    "eval generate r1/grid_max_vs_-2-n16-dpo-s2 generate-4ef425d0f1a1bdb0",
    "eval score r1/grid_max_vs_-2-n16-dpo-s2 score-fb8a3f980c274ba8",
    "eval generate r1/grid_max_vs_-2-n16-ipo-s1 generate-4f77f38d826a3762",
    "eval score r1/grid_max_vs_-2-n16-ipo-s1 score-f1e15d7c595dcec6",
    "eval generate r1/grid_max_vs_-2-n16-ipo-s2 generate-e087801ee1a2a956",
    "eval score r1/grid_max_vs_-2-n16-ipo-s2 score-477abd682adec41c",
    "eval generate r1/max-min-n16-dpo-s1 generate-07eb76be5550da7d",
    "eval score r1/max-min-n16-dpo-s1 score-ab7ce9fdd6b45987",
    "eval generate r1/max-min-n16-dpo-s2 generate-bc09f0529e19d812",
    "eval score r1/max-min-n16-dpo-s2 score-38e689da5aa2bc0e",
    "eval generate r1/max-min-n16-ipo-s1 generate-f4268b827d6c81b3",
    "eval score r1/max-min-n16-ipo-s1 score-195541cc734f3d76",
    "eval generate r1/max-min-n16-ipo-s2 generate-ee30c26e24e7bca6",
    "eval score r1/max-min-n16-ipo-s2 score-dcc1d8a31f5a2197",
    "eval generate r2/grid_max_vs_-2-n8-dpo-s1 generate-bbd2e3d8fd48c9ac",
    "eval score r2/grid_max_vs_-2-n8-dpo-s1 score-524802a3284dbe0b",
    "eval generate r2/grid_max_vs_-2-n8-dpo-s2 generate-ac8d9d04204f61ef",
    "eval score r2/grid_max_vs_-2-n8-dpo-s2 score-18bed2350e1c1c9a",
    "eval generate r2/grid_max_vs_-2-n8-ipo-s1 generate-ff5f790d72eab123",
    "eval score r2/grid_max_vs_-2-n8-ipo-s1 score-8362510cad099a77",
    "eval generate r2/grid_max_vs_-2-n8-ipo-s2 generate-eb637ddf5acc1ada",
    "eval score r2/grid_max_vs_-2-n8-ipo-s2 score-cfacacd5b0c5f153",
    "eval generate r2/max-min-n8-dpo-s1 generate-15a37aec1dd73127",
    "eval score r2/max-min-n8-dpo-s1 score-a76aa247444216e3",
    "eval generate r2/max-min-n8-dpo-s2 generate-5c809e5d75379e45",
    "eval score r2/max-min-n8-dpo-s2 score-80e2356c187c217a",
    "eval generate r2/max-min-n8-ipo-s1 generate-b1e24a0adf90c476",
    "eval score r2/max-min-n8-ipo-s1 score-8148816207cb04c8",
    "eval generate r2/max-min-n8-ipo-s2 generate-8d22555c9e667760",
    "eval score r2/max-min-n8-ipo-s2 score-72a55d1137a256b4",
    "eval generate r2/grid_max_vs_-2-n16-dpo-s1 generate-3ec201303be8142d",
    "eval score r2/grid_max_vs_-2-n16-dpo-s1 score-1883bfb94d9619a3",
    "eval generate r2/grid_max_vs_-2-n16-dpo-s2 generate-f1dda8f8bffeb6ab",
    "eval score r2/grid_max_vs_-2-n16-dpo-s2 score-2bb41ba10b697571",
    "eval generate r2/grid_max_vs_-2-n16-ipo-s1 generate-24d79958430ff259",
    "eval score r2/grid_max_vs_-2-n16-ipo-s1 score-dfb139b1d7c2c005",
    "eval generate r2/grid_max_vs_-2-n16-ipo-s2 generate-250b15c96365e630",
    "eval score r2/grid_max_vs_-2-n16-ipo-s2 score-ee34d5ff136115bb",
    "eval generate r2/max-min-n16-dpo-s1 generate-fda11e4b2318718e",
    "eval score r2/max-min-n16-dpo-s1 score-b8b8cae8f6297fbe",
    "eval generate r2/max-min-n16-dpo-s2 generate-9d65f0fa8ebd94c2",
    "eval score r2/max-min-n16-dpo-s2 score-b044053ac80b7595",
    "eval generate r2/max-min-n16-ipo-s1 generate-8169a6015614bf60",
    "eval score r2/max-min-n16-ipo-s1 score-ebde48b65fa7dac7",
    "eval generate r2/max-min-n16-ipo-s2 generate-3e9b1fc7885e2884",
    "eval score r2/max-min-n16-ipo-s2 score-814b9cfd5c45e99a",
    "eval pair r1/grid_max_vs_-2-n8-dpo-s1 generate-5f5cbe968dc16b80",
    "eval judge r1/grid_max_vs_-2-n8-dpo-s1 score-fcf3cc83096c867c",
    "eval pair r1/grid_max_vs_-2-n8-dpo-s2 generate-9d427fee3ead9168",
    "eval judge r1/grid_max_vs_-2-n8-dpo-s2 score-c6e2090fef1de6bc",
    "eval pair r1/grid_max_vs_-2-n8-ipo-s1 generate-51033f3a2444b28c",
    "eval judge r1/grid_max_vs_-2-n8-ipo-s1 score-2c10a6e68935eea5",
    "eval pair r1/grid_max_vs_-2-n8-ipo-s2 generate-c6b80f1a5fad43b8",
    "eval judge r1/grid_max_vs_-2-n8-ipo-s2 score-c577c3b79b826734",
    "eval pair r1/max-min-n8-dpo-s1 generate-82ea27b58e054741",
    "eval judge r1/max-min-n8-dpo-s1 score-8e40fd55a3f7f7c2",
    "eval pair r1/max-min-n8-dpo-s2 generate-05188942e4f4881b",
    "eval judge r1/max-min-n8-dpo-s2 score-cb8546be827d340c",
    "eval pair r1/max-min-n8-ipo-s1 generate-d2a4bacbde6fb73c",
    "eval judge r1/max-min-n8-ipo-s1 score-5a33d6b9ccb1ff2d",
    "eval pair r1/max-min-n8-ipo-s2 generate-95b35a499c0048cf",
    "eval judge r1/max-min-n8-ipo-s2 score-c93c467124917a29",
    "eval pair r1/grid_max_vs_-2-n16-dpo-s1 generate-fc5ce06483ad8431",
    "eval judge r1/grid_max_vs_-2-n16-dpo-s1 score-d400428001d2370b",
    "eval pair r1/grid_max_vs_-2-n16-dpo-s2 generate-1f63615f79281c3c",
    "eval judge r1/grid_max_vs_-2-n16-dpo-s2 score-32284e0142956bb6",
    "eval pair r1/grid_max_vs_-2-n16-ipo-s1 generate-2ebd513f0c88be2c",
    "eval judge r1/grid_max_vs_-2-n16-ipo-s1 score-3521dc4700838051",
    "eval pair r1/grid_max_vs_-2-n16-ipo-s2 generate-190fccff390e3437",
    "eval judge r1/grid_max_vs_-2-n16-ipo-s2 score-76f9cf2a73ffbd78",
    "eval pair r1/max-min-n16-dpo-s1 generate-1013d90565cf5a76",
    "eval judge r1/max-min-n16-dpo-s1 score-b937720df8ffa85c",
    "eval pair r1/max-min-n16-dpo-s2 generate-4008ff9f9931d039",
    "eval judge r1/max-min-n16-dpo-s2 score-74aa0abc9a646453",
    "eval pair r1/max-min-n16-ipo-s1 generate-9a40ddae118c5da9",
    "eval judge r1/max-min-n16-ipo-s1 score-f7ab2b46b7883366",
    "eval pair r1/max-min-n16-ipo-s2 generate-25dfb0d7118764bf",
    "eval judge r1/max-min-n16-ipo-s2 score-ccbfbaddf454d766",
    "eval pair r2/grid_max_vs_-2-n8-dpo-s1 generate-4795273ae9c8bb3c",
    "eval judge r2/grid_max_vs_-2-n8-dpo-s1 score-8d37b6a5f99516d5",
    "eval pair r2/grid_max_vs_-2-n8-dpo-s2 generate-968b1434f8f2f858",
    "eval judge r2/grid_max_vs_-2-n8-dpo-s2 score-b91abca4a382f9c4",
    "eval pair r2/grid_max_vs_-2-n8-ipo-s1 generate-9a47a18bc4233540",
    "eval judge r2/grid_max_vs_-2-n8-ipo-s1 score-78e96a11f134ae66",
    "eval pair r2/grid_max_vs_-2-n8-ipo-s2 generate-706f664f84759b47",
    "eval judge r2/grid_max_vs_-2-n8-ipo-s2 score-3f454fb41beaca05",
    "eval pair r2/max-min-n8-dpo-s1 generate-e52be912d29bf271",
    "eval judge r2/max-min-n8-dpo-s1 score-6e821e8556871564",
    "eval pair r2/max-min-n8-dpo-s2 generate-102d3a4c1f94d4e3",
    "eval judge r2/max-min-n8-dpo-s2 score-0eafa70a89d9de4c",
    "eval pair r2/max-min-n8-ipo-s1 generate-3af49343a794dd3a",
    "eval judge r2/max-min-n8-ipo-s1 score-04ae93bb3084bca6",
    "eval pair r2/max-min-n8-ipo-s2 generate-39822a699c42bd69",
    "eval judge r2/max-min-n8-ipo-s2 score-3d30d6c5e0158588",
    "eval pair r2/grid_max_vs_-2-n16-dpo-s1 generate-bf34a35d94ea1c8a",
    "eval judge r2/grid_max_vs_-2-n16-dpo-s1 score-d288215c87afd5e4",
    "eval pair r2/grid_max_vs_-2-n16-dpo-s2 generate-497b5c404e3df7a7",
    "eval judge r2/grid_max_vs_-2-n16-dpo-s2 score-7cf5fe003b780c75",
    "eval pair r2/grid_max_vs_-2-n16-ipo-s1 generate-c6c9cacd5c059461",
    "eval judge r2/grid_max_vs_-2-n16-ipo-s1 score-23e414915b7b5044",
    "eval pair r2/grid_max_vs_-2-n16-ipo-s2 generate-ab010eaca1d54bec",
    "eval judge r2/grid_max_vs_-2-n16-ipo-s2 score-d4801a8a7b2bb679",
    "eval pair r2/max-min-n16-dpo-s1 generate-9f11c0afceb8bb8e",
    "eval judge r2/max-min-n16-dpo-s1 score-2be9d837397f6438",
    "eval pair r2/max-min-n16-dpo-s2 generate-dab301dc0377f2c7",
    "eval judge r2/max-min-n16-dpo-s2 score-ff3eeae8c0885333",
    "eval pair r2/max-min-n16-ipo-s1 generate-3cf23ce0ab663ff4",
    "eval judge r2/max-min-n16-ipo-s1 score-368f8eed0ce5a5da",
    "eval pair r2/max-min-n16-ipo-s2 generate-a67d1686e36f8257",
    "eval judge r2/max-min-n16-ipo-s2 score-09a5b1a04e56d74a",
    "eval eval-2bbbaabe7e313a22",
];
const REMOTE: &[&str] = &[
    "generate generate-06ad103fafcc0e2a",
    "score score-829ba1f51efef39f",
    "pairs pairs-a421ecaef8ca33af",
    "train sigma_max_vs_-2 train-9ee2b4087aec5b19",
];
