//! Property tests: random and mutated bytes fed to every reader of untrusted input (JSONL
//! samples, prompts and pairs; Parquet; GGUF; safetensors headers; recipes). Each must return a
//! result or an error: never panic, and never make one allocation beyond a bound, which a
//! counting global allocator checks (a lying size field would otherwise ask for gigabytes).
//!
//! The cases are drawn from a fixed seed, so a run is reproducible and CI cannot fail by the luck
//! of the draw; set `PROPTEST_RNG_SEED` to explore other inputs (a failure found that way is a
//! bug to fix, and its seed then reproduces it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use proptest::prelude::*;
use sweetspot_core::BuildContext;
use sweetspot_core::recipe::{InputLayout, OnBadGroup, Recipe};
use sweetspot_io::{ReadOptions, SampleReader, ScoredReader, read_prompts};

/// The system allocator, remembering the largest single allocation of the current thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; only a thread-local counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// No single allocation while reading an input of a few KiB may exceed this.
const BOUND: usize = 64 << 20;

/// Runs `f`, failing the property if it made an allocation beyond [`BOUND`].
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    LARGEST.with(|l| l.set(0));
    let out = f();
    let largest = LARGEST.with(Cell::get);
    prop_assert!(
        largest <= BOUND,
        "{what}: one allocation of {largest} bytes"
    );
    Ok(out)
}

/// `cases` cases from a fixed seed, unless `PROPTEST_RNG_SEED` names another.
fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = proptest::test_runner::RngSeed::Fixed(20_261_202);
    }
    c
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `base` with up to a few bytes overwritten, a slice cut out, or a tail dropped.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    (
        prop::collection::vec((0..len, any::<u8>()), 0..8),
        0..len,
        0..len,
        any::<bool>(),
    )
        .prop_map(move |(flips, cut_at, cut_len, truncate)| {
            let mut b = base.clone();
            for (i, v) in flips {
                if i < b.len() {
                    b[i] = v;
                }
            }
            if truncate {
                b.truncate(cut_at);
            } else if cut_at < b.len() {
                let end = (cut_at + cut_len % 64).min(b.len());
                b.drain(cut_at..end);
            }
            b
        })
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn drain_scored(path: &Path) {
    let options = ReadOptions {
        layout: InputLayout::Auto,
        on_invalid_reward: OnBadGroup::Skip,
    };
    if let Ok(reader) = ScoredReader::open(path, options) {
        for r in reader {
            if r.is_err() {
                break;
            }
        }
    }
}

proptest! {
    #![proptest_config(config(160))]

    #[test]
    fn jsonl_readers_never_panic(
        bytes in mutated(std::fs::read(root().join("examples/data/scored-long.jsonl")).unwrap()
            .into_iter().take(4096).collect()),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_temp(tmp.path(), "in.jsonl", &bytes);
        bounded("scored reader", || drain_scored(&path))?;
        bounded("sample reader", || {
            if let Ok(r) = SampleReader::open(&path) {
                for g in r {
                    if g.is_err() {
                        break;
                    }
                }
            }
        })?;
        bounded("prompts reader", || drop(read_prompts(&path)))?;
    }

    #[test]
    fn random_bytes_as_jsonl_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_temp(tmp.path(), "in.jsonl", &bytes);
        bounded("scored reader", || drain_scored(&path))?;
        bounded("prompts reader", || drop(read_prompts(&path)))?;
    }

    #[test]
    fn pairs_reader_never_panics(
        bytes in mutated(br#"{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}
{"prompt": "x", "chosen": "y", "rejected": [{"role": "assistant", "content": "z"}]}
"#.to_vec()),
    ) {
        let tok = sweetspot_model::Tokenizer::from_dir(&root().join("tests/fixtures/models/policy"), &[]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = write_temp(tmp.path(), "pairs.jsonl", &bytes);
        bounded("pairs reader", || drop(sweetspot_train::run::read_pairs(&path, &tok)))?;
    }

    #[test]
    fn recipes_never_panic(
        bytes in mutated(std::fs::read(root().join("examples/quickstart/recipe.toml")).unwrap()),
    ) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let origin = root().join("examples/quickstart/recipe.toml");
        let parsed = bounded("recipe parser", || Recipe::from_toml(&text, Some(&origin)))?;
        if let Ok(recipe) = parsed {
            let ctx = BuildContext::new(root().join("examples/quickstart"));
            let src = sweetspot_runner::RecipeSource { recipe: &recipe, text: &text, origin: &origin };
            let stages = sweetspot_runner::Stages::all_of(&recipe);
            let checked = bounded("recipe check", || sweetspot_runner::validate_recipe(&src, &ctx, stages).is_ok())?;
            if checked {
                // A recipe that passes the check expands into a graph without panicking.
                bounded("recipe plan", || drop(sweetspot_runner::plan::plan(&recipe, &origin, &ctx)))?;
            }
        }
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn parquet_reader_never_panics(
        bytes in mutated(std::fs::read(root().join("examples/data/scored-long.parquet")).unwrap()),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_temp(tmp.path(), "in.parquet", &bytes);
        bounded("parquet reader", || drain_scored(&path))?;
    }

    #[test]
    fn gguf_parser_never_panics(
        bytes in mutated(std::fs::read(root().join("tests/fixtures/quants.gguf")).unwrap()),
    ) {
        let path = Path::new("mutated.gguf");
        bounded("gguf parser", || {
            if let Ok(g) = sweetspot_model::gguf::Gguf::parse(path, bytes.clone()) {
                let _ = g.llama_config();
                let names: Vec<String> = g.tensors.keys().cloned().collect();
                for name in names {
                    let _ = g.dequantize(&name);
                }
            }
        })?;
    }

    #[test]
    fn gguf_header_fields_never_overallocate(
        at in 0usize..512,
        value in prop_oneof![Just(u64::MAX), Just(1u64 << 40), Just(1u64 << 31), any::<u64>()],
    ) {
        // An 8-byte size field anywhere in the header set to a huge or random number.
        let mut bytes = std::fs::read(root().join("tests/fixtures/quants.gguf")).unwrap();
        let at = (at + 8).min(bytes.len().saturating_sub(8));
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        bounded("gguf parser", || {
            if let Ok(g) = sweetspot_model::gguf::Gguf::parse(Path::new("m.gguf"), bytes) {
                let _ = g.llama_config();
            }
        })?;
    }

    #[test]
    fn safetensors_headers_never_panic(
        bytes in mutated({
            let b = std::fs::read(root().join("tests/fixtures/models/policy/model.safetensors")).unwrap();
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            b[..(8 + n + 64).min(b.len())].to_vec()
        }),
        data_len in prop_oneof![Just(0u64), Just(1u64 << 20), any::<u64>()],
    ) {
        let header = bytes.get(8..).unwrap_or(&[]);
        bounded("safetensors header", || {
            drop(sweetspot_model::weights::parse_safetensors_header(header, data_len))
        })?;
        let tmp = tempfile::tempdir().unwrap();
        let path = write_temp(tmp.path(), "model.safetensors", &bytes);
        bounded("safetensors file", || {
            drop(sweetspot_model::weights::read_safetensors_header(&path))
        })?;
    }
}
