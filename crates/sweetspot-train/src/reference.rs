//! Reference log-probabilities shared by the trainings of a sweep.
//!
//! The datasets of a sweep draw on a few responses per prompt (the paper's 21 grid datasets on 7:
//! min, mu - 2 sigma, ..., max), so the same (prompt, response) sits in many of them. A
//! [`compute_reference`] pass reads every pairs file of the sweep, tokenizes each pair as the
//! trainer does, and computes the reference model's log-probability of each distinct (prompt
//! tokens, completion tokens) once; a training given the store ([`ReferenceStore::lookup`]) only
//! looks its pairs up.
//!
//! Invariants:
//! - A sequence's key is a hash of its token ids (the prompt as the trainer cuts it, and the
//!   completion): the chat rendering is in the ids; the model and the compute type are the
//!   store's own (one store per reference model and type, which the runner's node identity
//!   covers).
//! - The values are those the trainer computes for itself: the same frozen model
//!   ([`frozen_reference`]) on the same device, the same function ([`crate::response_logps`]).
//! - Resumable: each batch's values are appended to `<store>.partial` as they come; a killed
//!   pass keeps its complete lines and computes the rest; the store appears by rename only
//!   whole.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sweetspot_core::Progress;
use sweetspot_model::{Llama, Precision};

use crate::run::read_pairs;
use crate::{TokenizedPair, TrainError, response_logps};

/// The key of one (prompt, completion) token sequence.
pub fn sequence_key(prompt: &[u32], completion: &[u32]) -> String {
    let mut h = Sha256::new();
    h.update((prompt.len() as u64).to_le_bytes());
    for t in prompt.iter().chain(completion) {
        h.update(t.to_le_bytes());
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The reference model as the trainer uses it: the policy's weights off the autodiff graph, in
/// the compute type.
pub fn frozen_reference(policy: &Llama, dtype: Precision) -> Result<Llama, TrainError> {
    // With LoRA adapters the reference is the base, the adapters off (the same tensors).
    let base = policy.without_adapters();
    Ok(base.map_params(|p| p.no_grad()).compute_copy(dtype)?)
}

/// One line of a store.
#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    logp: f32,
}

/// Reference log-probabilities by [`sequence_key`].
#[derive(Debug, Default)]
pub struct ReferenceStore {
    path: PathBuf,
    values: HashMap<String, f32>,
}

impl ReferenceStore {
    /// Reads a store written by [`compute_reference`].
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
        let mut values = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let e: Entry = serde_json::from_str(line)
                .map_err(|e| TrainError::Input(format!("{}:{}: {e}", path.display(), i + 1)))?;
            values.insert(e.key, e.logp);
        }
        Ok(Self {
            path: path.to_path_buf(),
            values,
        })
    }

    /// Sequences held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The (chosen, rejected) reference log-probabilities of each pair of `pairs` (read from
    /// `file`, for the error), or an error naming the first pair the store lacks.
    pub fn lookup(
        &self,
        pairs: &[TokenizedPair],
        file: &Path,
    ) -> Result<(Vec<f32>, Vec<f32>), TrainError> {
        let mut chosen = Vec::with_capacity(pairs.len());
        let mut rejected = Vec::with_capacity(pairs.len());
        for (i, p) in pairs.iter().enumerate() {
            let get = |completion: &[u32], which: &str| {
                self.values
                    .get(&sequence_key(&p.prompt, completion))
                    .copied()
                    .ok_or_else(|| {
                        TrainError::Input(format!(
                            "{}: the shared reference log-probabilities lack pair {} ({which}) of {}",
                            self.path.display(),
                            i + 1,
                            file.display()
                        ))
                    })
            };
            chosen.push(get(&p.chosen, "chosen")?);
            rejected.push(get(&p.rejected, "rejected")?);
        }
        Ok((chosen, rejected))
    }
}

/// What a [`compute_reference`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReferenceCounts {
    /// Sequences the trainings would each have computed: 2 per pair, over every pairs file.
    pub requested: usize,
    /// Distinct sequences among them (what the store holds).
    pub distinct: usize,
    /// Of those, computed by this pass (the rest came from a killed pass's partial file).
    pub computed: usize,
}

/// Settings of a [`compute_reference`] pass.
#[derive(Debug, Clone)]
pub struct ReferenceSettings {
    /// The reference model (the trainings' initial policy).
    pub policy: PathBuf,
    /// Every pairs file whose pairs need the reference.
    pub pairs: Vec<PathBuf>,
    /// The store to write (JSONL; `<store>.partial` while it is written).
    pub output: PathBuf,
    /// The device (without autodiff: the pass runs on the trainer's autodiff device, so its
    /// kernels are the trainer's).
    pub device: Device,
    /// The trainings' compute type.
    pub dtype: Precision,
    /// The trainings' micro-batch, in pairs: a batch of the pass holds twice as many sequences.
    pub micro_batch_size: usize,
    /// Whether the trainings recompute activations in the backward pass (the same device kind).
    pub gradient_checkpointing: bool,
    /// The trainings' `[train.adapter]`: the reference is then the base as they hold it (in its
    /// `base_dtype`), the adapters off.
    pub adapter: Option<sweetspot_core::recipe::AdapterConfig>,
}

/// The partial file of a store.
pub fn partial_path(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    store.with_file_name(name)
}

/// Computes the reference log-probability of every distinct sequence of the pairs files.
pub fn compute_reference(
    s: &ReferenceSettings,
    progress: &dyn Progress,
) -> Result<ReferenceCounts, TrainError> {
    let device = if s.gradient_checkpointing {
        s.device.clone().autodiff().gradient_checkpointing()
    } else {
        s.device.clone().autodiff()
    };
    sweetspot_model::precision::check_supported(&s.device, s.dtype)?;
    // The model as the trainer loads it (an adapter folder merged into its base), without new
    // adapters: the reference is the base.
    let held = s.adapter.as_ref().map_or(Precision::F32, |a| a.base_dtype);
    let (policy, tok) = sweetspot_model::load_causal_lm(&s.policy, &device, held)?;
    let policy = if policy.has_adapters() {
        policy.merged()
    } else {
        policy
    };
    let dtype = s.adapter.as_ref().map_or(s.dtype, |a| a.base_dtype);
    let mut requested = 0;
    let mut seen = HashSet::new();
    // (key, prompt, completion) of each distinct sequence, in the order first met.
    let mut todo: Vec<(String, Vec<u32>, Vec<u32>)> = Vec::new();
    for file in &s.pairs {
        // A file that cannot be read (a dataset left empty by a skip rule) is its training's
        // error, reported by it; the other trainings go on with their reference.
        let pairs = match read_pairs(file, &tok) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!("reference: {e}; its training will fail on it");
                continue;
            }
        };
        for p in pairs {
            for c in [&p.chosen, &p.rejected] {
                requested += 1;
                let key = sequence_key(&p.prompt, c);
                if seen.insert(key.clone()) {
                    todo.push((key, p.prompt.clone(), c.clone()));
                }
            }
        }
    }
    let distinct = todo.len();
    let partial = partial_path(&s.output);
    // A killed pass's complete lines are kept; a torn last line is dropped.
    let mut done: HashSet<String> = HashSet::new();
    let mut kept = String::new();
    if let Ok(text) = std::fs::read_to_string(&partial) {
        for line in text.split_inclusive('\n') {
            if !line.ends_with('\n') {
                break;
            }
            match serde_json::from_str::<Entry>(line) {
                Ok(e) if seen.contains(&e.key) => {
                    if done.insert(e.key) {
                        kept.push_str(line);
                    }
                }
                _ => break,
            }
        }
    }
    if let Some(dir) = s.output.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| TrainError::Input(format!("{}: {e}", dir.display())))?;
    }
    sweetspot_model::export::write_atomic(&partial, kept.as_bytes())?;
    todo.retain(|(k, _, _)| !done.contains(k));
    // Longest first (a batch of similar lengths pads little; an out-of-memory shows at once).
    todo.sort_by_key(|(_, p, c)| std::cmp::Reverse(p.len() + c.len()));
    progress.set_total(Some(distinct as u64));
    progress.advance(done.len() as u64);
    let frozen = frozen_reference(&policy, dtype)?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .map_err(|e| TrainError::Input(format!("{}: {e}", partial.display())))?;
    let computed = todo.len();
    for batch in todo.chunks(2 * s.micro_batch_size.max(1)) {
        let seqs: Vec<(&[u32], &[u32])> = batch
            .iter()
            .map(|(_, p, c)| (p.as_slice(), c.as_slice()))
            .collect();
        let (l, _) = response_logps(&frozen, &seqs)?;
        let v = l
            .detach()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Input(format!("{e:?}")))?;
        let mut lines = String::new();
        for ((key, _, _), logp) in batch.iter().zip(v) {
            let e = Entry {
                key: key.clone(),
                logp,
            };
            lines.push_str(
                &serde_json::to_string(&e).map_err(|e| TrainError::Input(e.to_string()))?,
            );
            lines.push('\n');
        }
        file.write_all(lines.as_bytes())
            .and_then(|_| file.flush())
            .map_err(|e| TrainError::Input(format!("{}: {e}", partial.display())))?;
        progress.advance(batch.len() as u64);
    }
    file.sync_all()
        .map_err(|e| TrainError::Input(format!("{}: {e}", partial.display())))?;
    drop(file);
    std::fs::rename(&partial, &s.output)
        .map_err(|e| TrainError::Input(format!("{}: {e}", s.output.display())))?;
    Ok(ReferenceCounts {
        requested,
        distinct,
        computed,
    })
}
