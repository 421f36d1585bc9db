//! Batched generation on the device: greedy or sampled (temperature, top-k, top-p), per-sequence
//! stop, KV cache, finished rows dropped from the batch. Rows with the same prompt (the n samples
//! of a prompt) share one prefill: the prompt is run once and its keys and values are copied to
//! each of its rows. [`generate`] runs one static batch; [`generate_continuous`] keeps a fixed
//! number of rows busy, a waiting request taking the row of one that stopped.
//!
//! Reproducibility: every sequence draws from its own ChaCha8 stream, one uniform per generated
//! token, seeded from one integer, the sequence's seed, so a sample does not depend on which other
//! sequences share its batch, nor on whether its prefill was shared. The sampler gives sample `i`
//! of a prompt the seed `prompt_seed(run seed, prompt id) + i` ([`sample_seed`]): the rule vLLM
//! uses for a request's `n` choices (child `i` of a request with `seed = s` gets `s + i`), so one
//! request per prompt with `seed = prompt_seed` and one request per sample ask for the same
//! samples, and `sweetspot serve` draws what the in-process sampler draws.

use std::collections::HashMap;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use sweetspot_core::FinishReason;

use crate::error::ModelError;
use crate::llama::{KvCache, Llama};

/// How to pick each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax, first index on ties).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability (1 = off).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Longest response, in tokens.
    pub max_new_tokens: usize,
    /// transformers' `repetition_penalty` (1 = off): before anything else, the logit of every
    /// token the sequence holds (prompt and response) is divided by it where positive and
    /// multiplied by it where negative. Applied in greedy decoding too, as transformers does.
    pub repetition_penalty: f32,
    /// transformers' `min_p` (0 = off): after temperature, top-k and top-p, tokens whose
    /// probability is below `min_p` times the most likely token's are dropped (sampling only).
    pub min_p: f32,
}

impl SamplingParams {
    /// Sampling at `temperature` with top-p and top-k, no repetition penalty, no min-p.
    pub fn new(temperature: f32, top_p: f32, top_k: usize, max_new_tokens: usize) -> Self {
        Self {
            temperature,
            top_p,
            top_k,
            max_new_tokens,
            repetition_penalty: 1.0,
            min_p: 0.0,
        }
    }

    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self::new(0.0, 1.0, 0, max_new_tokens)
    }
}

/// One sequence to generate.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The sequence's own seed (its random stream is [`sequence_rng`] of it).
    pub seed: u64,
}

impl SeqRequest {
    /// Sample `sample_index` of prompt `prompt_id` in a run seeded `run_seed`.
    pub fn sample(prompt_ids: Vec<u32>, run_seed: u64, prompt_id: &str, sample_index: u32) -> Self {
        Self {
            prompt_ids,
            seed: sample_seed(run_seed, prompt_id, sample_index),
        }
    }
}

/// One generated response.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Response token ids (the end token included when it stopped on one).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Summed log-probability of the response tokens under the model's unmodified distribution
    /// (temperature 1, no top-k/top-p).
    pub logprob: f64,
}

/// The first sample's seed of prompt `prompt_id` in a run seeded `run_seed`: 62 bits of SHA-256
/// of the two, so adding any sample index stays below 2^63 (a non-negative signed 64-bit integer,
/// which every OpenAI-compatible server takes as a `seed`).
pub fn prompt_seed(run_seed: u64, prompt_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"sweetspot/prompt-seed/v1");
    h.update(run_seed.to_le_bytes());
    h.update((prompt_id.len() as u64).to_le_bytes());
    h.update(prompt_id.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first) >> 2
}

/// The seed of sample `sample_index` of a prompt: [`prompt_seed`] plus the index.
pub fn sample_seed(run_seed: u64, prompt_id: &str, sample_index: u32) -> u64 {
    prompt_seed(run_seed, prompt_id) + u64::from(sample_index)
}

/// The random stream of the sequence seeded `seed`.
pub fn sequence_rng(seed: u64) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"sweetspot/sample/v2");
    h.update(seed.to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// Applies transformers' `RepetitionPenaltyLogitsProcessor` to one row in place: the logit of
/// each distinct token of `history` (the sequence so far, prompt included) is divided by
/// `penalty` where it is positive and multiplied by it otherwise, in f32 as torch computes it.
pub fn penalize(row: &mut [f32], history: impl IntoIterator<Item = u32>, penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; row.len()];
    for t in history {
        let t = t as usize;
        if t < row.len() && !seen[t] {
            seen[t] = true;
            let x = row[t];
            row[t] = if x < 0.0 { x * penalty } else { x / penalty };
        }
    }
}

/// The tokens a draw can pick and their unnormalized weights.
enum Candidates {
    /// Every token, walked in id order with weight `exp(l / t - max)`.
    All,
    /// The kept tokens by logit, descending (ties by id), with their weights.
    Kept(Vec<usize>, Vec<f64>),
}

/// The draw's candidates under temperature `t` > 0, top-k, top-p and min-p (in transformers'
/// order: the kept mass of top-p is that of the top-k, and min-p's bar is relative to the most
/// likely token, which every filter keeps).
fn candidates(logits: &[f32], p: &SamplingParams) -> Candidates {
    let t = p.temperature as f64;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / t;
    let weight = |l: f32| (l as f64 / t - max).exp();
    let top_k = (p.top_k > 0 && p.top_k < logits.len()).then_some(p.top_k);
    let min_p = p.min_p as f64;
    if top_k.is_none() && p.top_p >= 1.0 && min_p <= 0.0 {
        return Candidates::All;
    }
    // The kept tokens in descending order: the top-k (with ties at the k-th), or, for top-p
    // alone, a growing prefix until it holds `top_p` of the mass, or for min-p alone, the tokens
    // whose weight (relative to the most likely token) reaches it.
    let (idx, total) = match top_k {
        Some(k) => {
            let idx = top_k_order(logits, k);
            let total: f64 = idx.iter().map(|&i| weight(logits[i])).sum();
            (idx, total)
        }
        None if p.top_p >= 1.0 => {
            let m = logits
                .iter()
                .filter(|&&l| weight(l) >= min_p)
                .count()
                .max(1);
            (top_k_order(logits, m), 0.0)
        }
        None => {
            let total: f64 = logits.iter().map(|&l| weight(l)).sum();
            let mut m = 64;
            loop {
                let idx = top_k_order(logits, m.min(logits.len()));
                // Summed as the walk below sums it, so the prefix holds what the walk needs.
                let mass: f64 = idx.iter().map(|&i| weight(logits[i]) / total).sum();
                if mass >= p.top_p as f64 || idx.len() >= logits.len() {
                    break (idx, total);
                }
                m *= 8;
            }
        }
    };
    let mut weights: Vec<f64> = idx.iter().map(|&i| weight(logits[i])).collect();
    let mut keep = weights.len();
    if p.top_p < 1.0 {
        let mut mass = 0.0;
        let mut n = 0;
        for w in &weights {
            n += 1;
            mass += w / total;
            if mass >= p.top_p as f64 {
                break;
            }
        }
        keep = n.max(1);
    }
    if min_p > 0.0 {
        // Weights are relative to the most likely token (weight 1), kept first.
        keep = weights[..keep]
            .iter()
            .take_while(|&&w| w >= min_p)
            .count()
            .max(1);
    }
    weights.truncate(keep);
    let mut idx = idx;
    idx.truncate(keep);
    Candidates::Kept(idx, weights)
}

/// Picks a token from `logits` (one row) with uniform draw `u` in [0, 1).
///
/// The rule is part of the sampling stream's definition (a change to it bumps the runner's
/// computation version, so older samples are not resumed as this build's): with neither top-k,
/// top-p nor min-p, the draw walks the whole vocabulary in id order (inverse CDF of the softmax at
/// `temperature`, no sort); otherwise it walks the kept tokens by logit, descending (ties by id):
/// top-k keeps every token whose logit reaches the k-th largest (as transformers does), top-p
/// then the most likely tokens until their share of the kept mass reaches `top_p` (at least one),
/// min-p then those whose probability reaches `min_p` times the most likely one's. Only the kept
/// tokens are sorted. The repetition penalty is applied to the row before ([`penalize`]).
pub fn pick(logits: &[f32], p: &SamplingParams, u: f64) -> u32 {
    if p.temperature <= 0.0 {
        return argmax(logits);
    }
    match candidates(logits, p) {
        Candidates::All => {
            let t = p.temperature as f64;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / t;
            let weight = |l: f32| (l as f64 / t - max).exp();
            let total: f64 = logits.iter().map(|&l| weight(l)).sum();
            let target = u * total;
            let mut acc = 0.0;
            let mut last = 0;
            for (i, &l) in logits.iter().enumerate() {
                let w = weight(l);
                if w > 0.0 {
                    acc += w;
                    last = i;
                    if target < acc {
                        return i as u32;
                    }
                }
            }
            last as u32
        }
        Candidates::Kept(idx, weights) => {
            let kept: f64 = weights.iter().sum();
            let target = u * kept;
            let mut acc = 0.0;
            for (j, w) in weights.iter().enumerate() {
                acc += w;
                if target < acc {
                    return idx[j] as u32;
                }
            }
            idx[idx.len() - 1] as u32
        }
    }
}

/// The probability [`pick`] gives each token of `logits` (one row) under `p`: one-hot at the
/// first maximum for greedy decoding. For checking the rule against a reference.
pub fn token_probabilities(logits: &[f32], p: &SamplingParams) -> Vec<f64> {
    let mut out = vec![0.0; logits.len()];
    if p.temperature <= 0.0 {
        out[argmax(logits) as usize] = 1.0;
        return out;
    }
    match candidates(logits, p) {
        Candidates::All => {
            let t = p.temperature as f64;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / t;
            let w: Vec<f64> = logits.iter().map(|&l| (l as f64 / t - max).exp()).collect();
            let total: f64 = w.iter().sum();
            for (o, w) in out.iter_mut().zip(w) {
                *o = w / total;
            }
        }
        Candidates::Kept(idx, weights) => {
            let total: f64 = weights.iter().sum();
            for (i, w) in idx.into_iter().zip(weights) {
                out[i] = w / total;
            }
        }
    }
    out
}

/// The tokens whose logit reaches the `k`-th largest (ties at the k-th all kept), descending
/// (ties by id): a selection, then a sort of only those.
fn top_k_order(logits: &[f32], k: usize) -> Vec<usize> {
    let mut keys = descending_keys(logits);
    if k < keys.len() {
        keys.select_nth_unstable(k - 1);
        let kth = logits[(keys[k - 1] & 0xffff_ffff) as usize];
        let mut kept: Vec<u64> = keys[..k].to_vec();
        // Tokens past the k-th with the same logit (larger ids) stay too.
        kept.extend(
            keys[k..]
                .iter()
                .filter(|&&key| logits[(key & 0xffff_ffff) as usize] >= kth),
        );
        keys = kept;
    }
    keys.sort_unstable();
    keys.into_iter()
        .map(|k| (k & 0xffff_ffff) as usize)
        .collect()
}

/// One `u64` per token whose ascending order is logit descending (`f32::total_cmp`), ties by
/// ascending id (the id is in the key, so keys are distinct).
fn descending_keys(logits: &[f32]) -> Vec<u64> {
    logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            // total_cmp's order as an unsigned integer (ascending), then inverted.
            let bits = l.to_bits();
            let ascending = if bits >> 31 == 1 {
                !bits
            } else {
                bits | (1 << 31)
            };
            (u64::from(!ascending) << 32) | i as u64
        })
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax_at(row: &[f32], token: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[token as usize] as f64 - max - sum.ln()
}

struct Active {
    /// Index into the requests.
    req: usize,
    rng: ChaCha8Rng,
    tokens: Vec<u32>,
    logprob: f64,
    next_pos: i64,
}

/// Generates one response per request, all in one batch. `stop_ids` end a response. Requests
/// with the same prompt share its prefill.
pub fn generate(
    model: &Llama,
    requests: &[SeqRequest],
    stop_ids: &[u32],
    params: &SamplingParams,
    on_token: impl FnMut(usize),
) -> Result<Vec<Generation>, ModelError> {
    generate_with(model, requests, stop_ids, params, true, on_token)
}

/// [`generate`], with the shared prefill on or off (`share_prefill`; off, every row prefills its
/// own copy of its prompt). The samples are the same either way.
pub fn generate_with(
    model: &Llama,
    requests: &[SeqRequest],
    stop_ids: &[u32],
    params: &SamplingParams,
    share_prefill: bool,
    on_token: impl FnMut(usize),
) -> Result<Vec<Generation>, ModelError> {
    let mut done: Vec<Option<Generation>> = vec![None; requests.len()];
    let limits = Batching {
        max_rows: requests.len().max(1),
        max_tokens: None,
        share_prefill,
        compact: false,
    };
    run(
        model,
        requests,
        stop_ids,
        params,
        limits,
        on_token,
        |i, g| {
            done[i] = Some(g);
            Ok(())
        },
        &|| false,
    )?;
    done.into_iter()
        .enumerate()
        .map(|(i, g)| g.ok_or_else(|| ModelError::Input(format!("sequence {i} did not finish"))))
        .collect()
}

/// How much [`generate_continuous`] keeps on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Sequences at once.
    pub rows: usize,
    /// Key/value slots at once (rows x slots, padding included), if bounded.
    pub tokens: Option<usize>,
}

/// Continuous batching: generates every request with at most `limits.rows` sequences on the
/// device at once. When sequences end, the next waiting requests (in order) join the batch in their
/// rows, so the batch stays full until the queue runs dry; a prompt's prefill is kept until its
/// last request has joined (its n samples prefill it once however they join), and key slots that
/// no row uses any more are dropped. `on_done(i, generation)` gets each request's response as soon as
/// it ends (an error from it stops the run). A sequence's tokens are the same as alone or in a
/// static batch: its draws come from its own seed, and padding never changes a row's attention.
/// With `limits.tokens`, a request joins only if the batch's key/value slots (rows x slots,
/// padding included) stay within it until every row could have ended (its prompt plus
/// `max_new_tokens`); a request that needs more alone is an error.
pub fn generate_continuous(
    model: &Llama,
    requests: &[SeqRequest],
    stop_ids: &[u32],
    params: &SamplingParams,
    limits: BatchLimits,
    on_token: impl FnMut(usize),
    on_done: impl FnMut(usize, Generation) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    generate_continuous_cancellable(
        model,
        requests,
        stop_ids,
        params,
        limits,
        on_token,
        on_done,
        &|| false,
    )
    .map(|_| ())
}

/// [`generate_continuous`], asking `cancelled` before each decode step (and each join): once it
/// answers true the run stops there, the requests not yet done are dropped, and the result is
/// `Ok(false)` (`Ok(true)`: every request finished). A server passes "has every client gone?".
#[allow(clippy::too_many_arguments)]
pub fn generate_continuous_cancellable(
    model: &Llama,
    requests: &[SeqRequest],
    stop_ids: &[u32],
    params: &SamplingParams,
    limits: BatchLimits,
    on_token: impl FnMut(usize),
    on_done: impl FnMut(usize, Generation) -> Result<(), ModelError>,
    cancelled: &dyn Fn() -> bool,
) -> Result<bool, ModelError> {
    let limits = Batching {
        max_rows: limits.rows.max(1),
        max_tokens: limits.tokens,
        share_prefill: true,
        compact: true,
    };
    run(
        model, requests, stop_ids, params, limits, on_token, on_done, cancelled,
    )
}

struct Batching {
    max_rows: usize,
    max_tokens: Option<usize>,
    share_prefill: bool,
    /// Drop leading key slots no row uses when rows leave.
    compact: bool,
}

/// The prefill of some requests: their cache rows, key masks and last logits, one per request.
#[derive(Clone)]
struct Prefilled {
    cache: KvCache,
    key_mask: Vec<Vec<bool>>,
    logits: Vec<f32>,
}

fn upload(m: &[Vec<bool>], device: &burn::tensor::Device) -> Tensor<2, Bool> {
    let (n, s) = (m.len(), m.first().map_or(0, Vec::len));
    Tensor::from_data(TensorData::new(m.concat(), [n, s]), device)
}

fn to_vec(x: Tensor<3>) -> Result<Vec<f32>, ModelError> {
    x.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Input(format!("cannot read logits: {e:?}")))
}

/// Prefills `requests` together, left-padded to the longest: their cache rows, key masks and
/// last logits.
fn prefill(model: &Llama, requests: &[SeqRequest]) -> Result<Prefilled, ModelError> {
    let device = model.device().clone();
    let b = requests.len();
    let t = requests
        .iter()
        .map(|r| r.prompt_ids.len())
        .max()
        .unwrap_or(0);
    let mut tokens = Vec::with_capacity(b * t);
    let mut positions = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for r in requests {
        let ids = &r.prompt_ids;
        let pad = t - ids.len();
        tokens.extend(std::iter::repeat_n(0i64, pad));
        tokens.extend(ids.iter().map(|&x| x as i64));
        positions.extend(std::iter::repeat_n(0i64, pad));
        positions.extend(0..ids.len() as i64);
        mask.extend((0..t).map(|j| j >= pad));
    }
    // The key mask lives on the host ([rows][slots]) and is uploaded each step: it is tiny, and
    // burn-flex 0.22 turns a selected Bool tensor into U8, which `cat` then rejects.
    let key_mask: Vec<Vec<bool>> = mask.chunks(t).map(<[bool]>::to_vec).collect();
    let mut cache = KvCache::new();
    let input: Tensor<2, Int> = Tensor::from_data(TensorData::new(tokens, [b, t]), &device);
    let pos: Tensor<2, Int> = Tensor::from_data(TensorData::new(positions, [b, t]), &device);
    let hidden = model.forward_hidden(input, pos, upload(&key_mask, &device), Some(&mut cache))?;
    let logits = to_vec(model.logits(hidden.narrow(1, t - 1, 1)))?;
    Ok(Prefilled {
        cache,
        key_mask,
        logits,
    })
}

/// The rows for the requests that join the batch, from `prefixes`: each distinct prompt's
/// prefill (one row, no padding), computed for the prompts not in it yet. With a prompt's n
/// samples joining at different times, the prompt is prefilled once.
fn join<'a>(
    model: &Llama,
    new: &'a [SeqRequest],
    prefixes: &mut HashMap<&'a [u32], Prefilled>,
) -> Result<Prefilled, ModelError> {
    let vocab = model.config.vocab_size;
    let mut missing: Vec<&'a [u32]> = Vec::new();
    for r in new {
        let ids = r.prompt_ids.as_slice();
        if !prefixes.contains_key(ids) && !missing.contains(&ids) {
            missing.push(ids);
        }
    }
    if !missing.is_empty() {
        let reqs: Vec<SeqRequest> = missing
            .iter()
            .map(|ids| SeqRequest {
                prompt_ids: ids.to_vec(),
                seed: 0,
            })
            .collect();
        let p = prefill(model, &reqs)?;
        for (i, ids) in missing.into_iter().enumerate() {
            let pad = p.key_mask[i].iter().position(|&x| x).unwrap_or(0);
            let mut cache = p.cache.clone();
            let row: Tensor<1, Int> =
                Tensor::from_data(TensorData::new(vec![i as i64], [1]), model.device());
            cache.retain_rows(&row);
            cache.trim_front(pad);
            prefixes.insert(
                ids,
                Prefilled {
                    cache,
                    key_mask: vec![p.key_mask[i][pad..].to_vec()],
                    logits: p.logits[i * vocab..(i + 1) * vocab].to_vec(),
                },
            );
        }
    }
    let slots = new
        .iter()
        .map(|r| prefixes[r.prompt_ids.as_slice()].cache.len())
        .max()
        .unwrap_or(0);
    let mut parts = Vec::with_capacity(new.len());
    let mut key_mask = Vec::with_capacity(new.len());
    let mut logits = Vec::with_capacity(new.len() * vocab);
    for r in new {
        let e = &prefixes[r.prompt_ids.as_slice()];
        let pad = slots - e.cache.len();
        let mut cache = e.cache.clone();
        cache.pad_front(pad);
        parts.push(cache);
        let mut m = vec![false; pad];
        m.extend_from_slice(&e.key_mask[0]);
        key_mask.push(m);
        logits.extend_from_slice(&e.logits);
    }
    Ok(Prefilled {
        cache: KvCache::cat_rows(parts)?,
        key_mask,
        logits,
    })
}

/// Ok(false) when `cancelled` stopped it.
#[allow(clippy::too_many_arguments)]
fn run(
    model: &Llama,
    requests: &[SeqRequest],
    stop_ids: &[u32],
    params: &SamplingParams,
    limits: Batching,
    mut on_token: impl FnMut(usize),
    mut on_done: impl FnMut(usize, Generation) -> Result<(), ModelError>,
    cancelled: &dyn Fn() -> bool,
) -> Result<bool, ModelError> {
    if requests.is_empty() {
        return Ok(true);
    }
    if params.max_new_tokens == 0 {
        return Err(ModelError::Input(
            "max_new_tokens must be at least 1".into(),
        ));
    }
    if let Some(i) = requests.iter().position(|r| r.prompt_ids.is_empty()) {
        return Err(ModelError::Input(format!(
            "sequence {i} of the batch has an empty prompt"
        )));
    }
    let device = model.device().clone();
    let vocab = model.config.vocab_size;
    let mut cache = KvCache::new();
    let mut key_mask: Vec<Vec<bool>> = Vec::new();
    let mut logits: Vec<f32> = Vec::new();
    let mut active: Vec<Active> = Vec::new();
    let mut next = 0;
    // With a shared prefill, each prompt's prefill is kept until its last request has joined.
    let mut last_use: HashMap<&[u32], usize> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        last_use.insert(r.prompt_ids.as_slice(), i);
    }
    let mut prefixes: HashMap<&[u32], Prefilled> = HashMap::new();
    loop {
        if cancelled() {
            return Ok(false);
        }
        // Free rows take the next pending requests.
        let mut take = if active.len() < limits.max_rows && next < requests.len() {
            (limits.max_rows - active.len()).min(requests.len() - next)
        } else {
            0
        };
        if let (Some(budget), true) = (limits.max_tokens, take > 0) {
            // The slots every row could reach: the batch's (or a joining prompt's, if longer)
            // plus max_new_tokens; rows x that must fit.
            let slots = if active.is_empty() { 0 } else { cache.len() };
            let mut longest = 0;
            let mut fits = 0;
            for r in &requests[next..next + take] {
                longest = longest.max(r.prompt_ids.len());
                let peak = slots.max(longest) + params.max_new_tokens;
                if (active.len() + fits + 1).saturating_mul(peak) > budget {
                    break;
                }
                fits += 1;
            }
            if fits == 0 && active.is_empty() {
                let r = &requests[next];
                return Err(ModelError::Input(format!(
                    "max_batch_tokens = {budget} is less than sequence {next} needs alone: its \
                     prompt ({} tokens) plus max_new_tokens ({})",
                    r.prompt_ids.len(),
                    params.max_new_tokens
                )));
            }
            take = fits;
        }
        if take > 0 {
            let new = &requests[next..next + take];
            let p = if limits.share_prefill {
                let p = join(model, new, &mut prefixes)?;
                prefixes.retain(|ids, _| last_use[ids] >= next + take);
                p
            } else {
                prefill(model, new)?
            };
            let (old_slots, new_slots) = (cache.len(), p.cache.len());
            let mut new_cache = p.cache;
            let mut new_mask = p.key_mask;
            if !active.is_empty() {
                // Line the two up on the right: the shorter is padded in front.
                if old_slots < new_slots {
                    cache.pad_front(new_slots - old_slots);
                    for row in key_mask.iter_mut() {
                        row.splice(0..0, std::iter::repeat_n(false, new_slots - old_slots));
                    }
                } else {
                    new_cache.pad_front(old_slots - new_slots);
                    for row in new_mask.iter_mut() {
                        row.splice(0..0, std::iter::repeat_n(false, old_slots - new_slots));
                    }
                }
                cache = KvCache::cat_rows(vec![std::mem::take(&mut cache), new_cache])?;
            } else {
                cache = new_cache;
                key_mask.clear();
                logits.clear();
            }
            key_mask.extend(new_mask);
            logits.extend(p.logits);
            active.extend(new.iter().enumerate().map(|(j, r)| Active {
                req: next + j,
                rng: sequence_rng(r.seed),
                tokens: Vec::new(),
                logprob: 0.0,
                next_pos: r.prompt_ids.len() as i64,
            }));
            next += take;
        }
        if active.is_empty() {
            break;
        }
        let mut keep = Vec::with_capacity(active.len());
        let mut next_tokens = Vec::with_capacity(active.len());
        for (row, a) in active.iter_mut().enumerate() {
            let l = &logits[row * vocab..(row + 1) * vocab];
            let u: f64 = a.rng.random();
            let tok = if params.repetition_penalty == 1.0 {
                pick(l, params, u)
            } else {
                let mut penalized = l.to_vec();
                let history = requests[a.req].prompt_ids.iter().chain(&a.tokens).copied();
                penalize(&mut penalized, history, params.repetition_penalty);
                pick(&penalized, params, u)
            };
            a.logprob += log_softmax_at(l, tok);
            a.tokens.push(tok);
            a.next_pos += 1;
            let stopped = stop_ids.contains(&tok);
            if stopped || a.tokens.len() >= params.max_new_tokens {
                on_done(
                    a.req,
                    Generation {
                        tokens: std::mem::take(&mut a.tokens),
                        finish_reason: if stopped {
                            sweetspot_core::FinishReason::Stop
                        } else {
                            sweetspot_core::FinishReason::Length
                        },
                        logprob: a.logprob,
                    },
                )?;
            } else {
                keep.push(row);
                next_tokens.push(tok as i64);
            }
        }
        on_token(active.len());
        if keep.is_empty() {
            active.clear();
            continue;
        }
        if keep.len() < active.len() {
            let rows: Tensor<1, Int> = Tensor::from_data(
                TensorData::new(
                    keep.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                    [keep.len()],
                ),
                &device,
            );
            cache.retain_rows(&rows);
            let mut i = 0;
            key_mask.retain(|_| {
                let k = keep.contains(&i);
                i += 1;
                k
            });
            let mut i = 0;
            active.retain(|_| {
                let k = keep.contains(&i);
                i += 1;
                k
            });
            if limits.compact {
                // Slots before every remaining row's first real key are padding for all.
                let unused = key_mask
                    .iter()
                    .map(|m| m.iter().position(|&x| x).unwrap_or(m.len()))
                    .min()
                    .unwrap_or(0);
                if unused > 0 {
                    cache.trim_front(unused);
                    for row in key_mask.iter_mut() {
                        row.drain(..unused);
                    }
                }
            }
        }
        let n = active.len();
        let input: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(next_tokens, [n, 1]), &device);
        let pos: Tensor<2, Int> = Tensor::from_data(
            TensorData::new(
                active.iter().map(|a| a.next_pos - 1).collect::<Vec<_>>(),
                [n, 1],
            ),
            &device,
        );
        for row in key_mask.iter_mut() {
            row.push(true);
        }
        let hidden =
            model.forward_hidden(input, pos, upload(&key_mask, &device), Some(&mut cache))?;
        logits = to_vec(model.logits(hidden))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let p = SamplingParams::greedy(1);
        assert_eq!(pick(&[0.1, 0.7, 0.7, 0.2], &p, 0.5), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams::new(1.0, 1.0, 1, 1);
        for u in [0.0, 0.3, 0.999] {
            assert_eq!(pick(&[0.1, 3.0, 0.7], &p, u), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // logits ln(1), ln(3): probabilities 0.25 and 0.75 at temperature 1.
        let p = SamplingParams::new(1.0, 1.0, 0, 1);
        let l = [0.0f32, 3f32.ln()];
        // No filter: the draw walks the ids in order, token 0 (0.25) first, then token 1.
        assert_eq!(pick(&l, &p, 0.20), 0);
        assert_eq!(pick(&l, &p, 0.30), 1);
        assert_eq!(pick(&l, &p, 0.99), 1);
        // With a filter (here one that keeps both) it walks the kept tokens by logit.
        let k = SamplingParams { top_p: 0.999, ..p };
        assert_eq!(pick(&l, &k, 0.70), 1);
        assert_eq!(pick(&l, &k, 0.80), 0);
        // top_p 0.5 keeps only token 1.
        let p = SamplingParams { top_p: 0.5, ..p };
        assert_eq!(pick(&l, &p, 0.99), 1);
    }

    fn descending_order(logits: &[f32]) -> Vec<usize> {
        top_k_order(logits, logits.len())
    }

    /// The integer-key sort gives exactly the order of the comparison sort it replaced
    /// (logit descending by `total_cmp`, ties by id), negative zeros, ties and infinities
    /// included, so every draw picks the same token as before.
    #[test]
    fn integer_key_order_is_the_comparison_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for case in 0..200 {
            let n = 1 + case * 7;
            let mut row: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() - 0.5) * 40.0).collect();
            // Ties, signed zeros and infinities.
            for (j, v) in [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1.5, 1.5]
                .into_iter()
                .enumerate()
            {
                if j * 3 < n {
                    row[j * 3] = v;
                }
            }
            let mut want: Vec<usize> = (0..n).collect();
            want.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            assert_eq!(descending_order(&row), want, "case {case}");
        }
    }

    /// With top-k or top-p the draw picks what a full sort of the vocabulary would pick (the
    /// selection keeps exactly the top-k set with its ties; top-p grows its prefix until the
    /// mass is there), on rows with ties, for many draws.
    #[test]
    fn filtered_draws_equal_the_full_sort() {
        fn reference(logits: &[f32], p: &SamplingParams, u: f64) -> u32 {
            let t = p.temperature as f64;
            let idx = descending_order(logits);
            let mut keep = idx.len();
            if p.top_k > 0 && p.top_k < keep {
                let kth = logits[idx[p.top_k - 1]];
                keep = idx.iter().take_while(|&&i| logits[i] >= kth).count();
            }
            let max = logits[idx[0]] as f64 / t;
            let w: Vec<f64> = idx[..keep]
                .iter()
                .map(|&i| (logits[i] as f64 / t - max).exp())
                .collect();
            let total: f64 = w.iter().sum();
            if p.top_p < 1.0 {
                let (mut mass, mut n) = (0.0, 0);
                for x in &w {
                    n += 1;
                    mass += x / total;
                    if mass >= p.top_p as f64 {
                        break;
                    }
                }
                keep = n.max(1);
            }
            let target = u * w[..keep].iter().sum::<f64>();
            let mut acc = 0.0;
            for (j, x) in w[..keep].iter().enumerate() {
                acc += x;
                if target < acc {
                    return idx[j] as u32;
                }
            }
            idx[keep - 1] as u32
        }
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for case in 0..300 {
            let n = 2 + case * 37;
            let mut row: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() - 0.5) * 16.0).collect();
            for j in (0..n).step_by(5) {
                row[j] = 1.25; // ties
            }
            let p = SamplingParams::new(
                [0.7, 1.0, 1.3][case % 3],
                [1.0, 0.9, 0.5, 0.99, 0.3][case % 5],
                [0, 1, 5, 50][case % 4],
                1,
            );
            if p.top_k == 0 && p.top_p >= 1.0 {
                continue;
            }
            for _ in 0..20 {
                let u: f64 = rng.random();
                assert_eq!(
                    pick(&row, &p, u),
                    reference(&row, &p, u),
                    "case {case} u {u}"
                );
            }
        }
    }

    #[test]
    fn streams_depend_on_their_key_only() {
        let a: u64 = sequence_rng(sample_seed(1, "p", 3)).random();
        assert_eq!(a, sequence_rng(sample_seed(1, "p", 3)).random::<u64>());
        assert_ne!(a, sequence_rng(sample_seed(1, "p", 4)).random::<u64>());
        assert_ne!(a, sequence_rng(sample_seed(2, "p", 3)).random::<u64>());
        assert_ne!(a, sequence_rng(sample_seed(1, "q", 3)).random::<u64>());
        // vLLM's rule for a request's n choices: sample i is the prompt's seed plus i.
        assert_eq!(sample_seed(7, "p", 5), prompt_seed(7, "p") + 5);
        assert!(sample_seed(7, "p", u32::MAX) < 1 << 63);
    }
}
