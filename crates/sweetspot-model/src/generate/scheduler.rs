//! The batching scheduler: requests in, one [`Generation`] per request out. [`generate`] runs
//! one static batch; [`generate_continuous`] keeps a fixed number of rows busy, a waiting request
//! taking the row of one that stopped, and [`generate_continuous_cancellable`] can be stopped
//! between steps. All three are one loop (`run`) under different [`Batching`] limits.
//!
//! Invariants:
//! - A sequence's tokens are the same alone, in a static batch or joining a continuous one: its
//!   draws come from its own seed ([`super::seed`]), and padding never changes a row's attention
//!   (left padding, masked keys).
//! - Rows with the same prompt share one prefill: the prompt is run once and its keys and values
//!   copied to each of its rows; a prompt's prefill is kept until its last request has joined.
//! - With a key/value budget ([`BatchLimits::tokens`]), a request joins only if the batch stays
//!   within it until every row could have ended.
//! - Requests join in order. A joining request takes the row of a sequence that ended, its keys
//!   and values written into that row of the cache in place (no copy of the batch); rows no
//!   request takes are dropped once an eighth of the batch or more is free (on the CPU the kept
//!   rows move down in place, [`KvCache::retain_rows`]), and key slots no row uses any more are
//!   dropped (continuous batching).
//! - Between steps nothing else copies the cache: a decoding step writes its keys into the
//!   cache's buffers ([`KvCache`]), which a batch's cache gets with room for every row's prompt
//!   plus `max_new_tokens` when rows join (what the memory plan counts), so no step grows them;
//!   the rows' draws run on all cores.

use std::collections::HashMap;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sweetspot_core::FinishReason;

use super::sampling::{SamplingParams, log_softmax_at, penalize, pick};
use super::seed::{sample_seed, sequence_rng};
use crate::error::ModelError;
use crate::llama::{CacheRows, KvCache, Llama};
use sweetspot_core::rows::cache_slots;

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

/// Leading key slots that every row masks, dropped from the cache once there are this many
/// (and whenever rows are dropped).
const TRIM_SLOTS: usize = 64;

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
        .try_into_vec::<f32>()
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
    if t == 0 {
        return Err(ModelError::Input("a prompt without tokens".into()));
    }
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
    // Only each row's last position is read (left padding: every row's last slot).
    let last: Vec<usize> = (0..b).map(|r| r * t + t - 1).collect();
    let hidden = model.forward_hidden_rows(
        input,
        pos,
        upload(&key_mask, &device),
        Some(&mut cache),
        &last,
    )?;
    let logits = to_vec(model.logits(hidden.unsqueeze_dim::<3>(1)))?;
    Ok(Prefilled {
        cache,
        key_mask,
        logits,
    })
}

/// The rows for the requests that join the batch, from `prefixes`: each distinct prompt's
/// prefill (one row, no padding), computed for the prompts not in it yet. With a prompt's n
/// samples joining at different times, the prompt is prefilled once. The cache has room for
/// `room` more slots (what the rows can still write).
fn join<'a>(
    model: &Llama,
    new: &'a [SeqRequest],
    prefixes: &mut HashMap<&'a [u32], Prefilled>,
    room: usize,
) -> Result<Prefilled, ModelError> {
    let vocab = model.config.vocab_size;
    prefill_prompts(model, new, prefixes)?;
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
        parts.push(CacheRows {
            cache: &e.cache,
            rows: 0..1,
            skip: 0,
        });
        let mut m = vec![false; slots - e.cache.len()];
        m.extend_from_slice(&e.key_mask[0]);
        key_mask.push(m);
        logits.extend_from_slice(&e.logits);
    }
    Ok(Prefilled {
        cache: KvCache::stack(&parts, slots, cache_slots(slots + room))?,
        key_mask,
        logits,
    })
}

/// Puts in `prefixes` the prefill of each distinct prompt of `new` not in it yet (one row, no
/// padding).
fn prefill_prompts<'a>(
    model: &Llama,
    new: &'a [SeqRequest],
    prefixes: &mut HashMap<&'a [u32], Prefilled>,
) -> Result<(), ModelError> {
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
            let row = CacheRows {
                cache: &p.cache,
                rows: i..i + 1,
                skip: pad,
            };
            let len = p.cache.len() - pad;
            let cache = KvCache::stack(&[row], len, cache_slots(len))?;
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
    Ok(())
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
    // The batch: per row, its sequence (None: the row's sequence ended and the row waits for
    // the next request or to be dropped), its key mask and its last logits.
    let mut cache = KvCache::new();
    let mut rows: Vec<Option<Active>> = Vec::new();
    let mut key_mask: Vec<Vec<bool>> = Vec::new();
    let mut logits: Vec<f32> = Vec::new();
    let mut next = 0;
    // With a shared prefill, each prompt's prefill is kept until its last request has joined.
    let mut last_use: HashMap<&[u32], usize> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        last_use.insert(r.prompt_ids.as_slice(), i);
    }
    let mut prefixes: HashMap<&[u32], Prefilled> = HashMap::new();
    let active = |rows: &[Option<Active>]| rows.iter().filter(|r| r.is_some()).count();
    loop {
        if cancelled() {
            return Ok(false);
        }
        let live = active(&rows);
        // Free rows take the next pending requests.
        let mut take = if live < limits.max_rows && next < requests.len() {
            (limits.max_rows - live).min(requests.len() - next)
        } else {
            0
        };
        if let (Some(budget), true) = (limits.max_tokens, take > 0) {
            // The slots every row could reach: the batch's (or a joining prompt's, if longer)
            // plus max_new_tokens; rows x that must fit, the batch's free rows counted (a
            // joining request takes one of them first).
            let (slots, held) = if live == 0 {
                (0, 0)
            } else {
                (cache.len(), rows.len())
            };
            let mut longest = 0;
            let mut fits = 0;
            for r in &requests[next..next + take] {
                longest = longest.max(r.prompt_ids.len());
                let peak = slots.max(longest) + params.max_new_tokens;
                if (live + fits + 1).max(held).saturating_mul(peak) > budget {
                    break;
                }
                fits += 1;
            }
            if fits == 0 && live == 0 {
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
            let joining = new.iter().enumerate().map(|(j, r)| Active {
                req: next + j,
                rng: sequence_rng(r.seed),
                tokens: Vec::new(),
                logprob: 0.0,
                next_pos: r.prompt_ids.len() as i64,
            });
            if live == 0 {
                // A new batch: the joining rows side by side.
                let p = if limits.share_prefill {
                    join(model, new, &mut prefixes, params.max_new_tokens)?
                } else {
                    prefill(model, new)?
                };
                cache = p.cache;
                key_mask = p.key_mask;
                logits = p.logits;
                rows = joining.map(Some).collect();
            } else {
                // Each joining row's prefill: a cache, the row in it, its key mask and logits.
                let own;
                let sources: Vec<(&KvCache, usize, &[bool], &[f32])> = if limits.share_prefill {
                    prefill_prompts(model, new, &mut prefixes)?;
                    new.iter()
                        .map(|r| {
                            let e = &prefixes[r.prompt_ids.as_slice()];
                            (&e.cache, 0, e.key_mask[0].as_slice(), e.logits.as_slice())
                        })
                        .collect()
                } else {
                    own = prefill(model, new)?;
                    (0..take)
                        .map(|j| {
                            (
                                &own.cache,
                                j,
                                own.key_mask[j].as_slice(),
                                &own.logits[j * vocab..(j + 1) * vocab],
                            )
                        })
                        .collect()
                };
                // Line the rows up on the right: the batch is padded in front when a joining
                // prefill is longer, a joining row where it is shorter.
                let longest = sources.iter().map(|s| s.0.len()).max().unwrap_or(0);
                if longest > cache.len() {
                    let pad = longest - cache.len();
                    cache.pad_front(pad);
                    for row in key_mask.iter_mut() {
                        row.splice(0..0, std::iter::repeat_n(false, pad));
                    }
                }
                let slots = cache.len();
                let free_rows: Vec<usize> =
                    (0..rows.len()).filter(|&r| rows[r].is_none()).collect();
                let mut free = free_rows.into_iter();
                let held = rows.len();
                let mut extra = Vec::new();
                for (src, a) in sources.into_iter().zip(joining) {
                    let (part, part_row, part_mask, part_logits) = src;
                    let mut m = vec![false; slots - part.len()];
                    m.extend_from_slice(part_mask);
                    match free.next() {
                        // The row of an ended sequence: written in place.
                        Some(r) => {
                            cache.write_row(r, part, part_row)?;
                            key_mask[r] = m;
                            logits[r * vocab..(r + 1) * vocab].copy_from_slice(part_logits);
                            rows[r] = Some(a);
                        }
                        // No free row: a new row after the others.
                        None => {
                            extra.push(CacheRows {
                                cache: part,
                                rows: part_row..part_row + 1,
                                skip: 0,
                            });
                            key_mask.push(m);
                            logits.extend_from_slice(part_logits);
                            rows.push(Some(a));
                        }
                    }
                }
                // The joining rows may write up to max_new_tokens past the batch's slots.
                let reach = slots + params.max_new_tokens;
                if extra.is_empty() {
                    cache.reserve(reach);
                } else {
                    let mut parts = vec![CacheRows {
                        cache: &cache,
                        rows: 0..held,
                        skip: 0,
                    }];
                    parts.extend(extra);
                    let capacity = cache_slots(reach).max(cache.capacity());
                    cache = KvCache::stack(&parts, slots, capacity)?;
                }
            }
            if limits.share_prefill {
                prefixes.retain(|ids, _| last_use[ids] >= next + take);
            }
            next += take;
        }
        let live = active(&rows);
        if live == 0 {
            break;
        }
        // Each row's draw and log-probability, the rows spread over the cores (a row's values do
        // not depend on which thread computes them).
        let drawn: Vec<Option<(u32, f64)>> = rows
            .par_iter_mut()
            .zip(logits.par_chunks_exact(vocab))
            .map(|(a, l)| {
                let a = a.as_mut()?;
                let u: f64 = a.rng.random();
                let tok = if params.repetition_penalty == 1.0 {
                    pick(l, params, u)
                } else {
                    let mut penalized = l.to_vec();
                    let history = requests[a.req].prompt_ids.iter().chain(&a.tokens).copied();
                    penalize(&mut penalized, history, params.repetition_penalty);
                    pick(&penalized, params, u)
                };
                Some((tok, log_softmax_at(l, tok)))
            })
            .collect();
        let mut next_tokens = vec![0i64; rows.len()];
        for (row, (slot, drawn)) in rows.iter_mut().zip(drawn).enumerate() {
            let (Some(a), Some((tok, logprob))) = (slot.as_mut(), drawn) else {
                continue;
            };
            a.logprob += logprob;
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
                *slot = None;
                key_mask[row].fill(false);
            } else {
                next_tokens[row] = tok as i64;
            }
        }
        on_token(live);
        let live = active(&rows);
        if live == 0 {
            continue;
        }
        // Rows whose sequence ended stay in the batch (their keys masked, their outputs unused)
        // for the next requests to take in place; once an eighth of the rows or more are free
        // and no request will take them at the next step (the queue is dry, or a key/value
        // budget may hold requests back), they are dropped. Dropping rows that requests then
        // join would copy the whole cache twice (the kept rows, then the joining rows after
        // them) where taking them in place copies only the joining rows' prefill.
        let free = rows.len() - live;
        let refilled = next < requests.len() && limits.max_tokens.is_none();
        let dropped = free > 0 && free * 8 >= rows.len() && !refilled;
        if dropped {
            let keep: Vec<usize> = (0..rows.len()).filter(|&r| rows[r].is_some()).collect();
            cache.retain_rows(&keep);
            let mut kept = rows.iter().map(Option::is_some);
            key_mask.retain(|_| kept.next() == Some(true));
            let mut kept = rows.iter().map(Option::is_some);
            next_tokens.retain(|_| kept.next() == Some(true));
            rows.retain(Option::is_some);
        }
        if limits.compact {
            // Slots before every live row's first real key are padding for all: dropped when
            // rows were, or when there are a cache buffer's worth of them.
            let unused = key_mask
                .iter()
                .map(|m| m.iter().position(|&x| x).unwrap_or(m.len()))
                .min()
                .unwrap_or(0);
            if unused > 0 && (dropped || unused >= TRIM_SLOTS) {
                cache.trim_front(unused);
                for row in key_mask.iter_mut() {
                    row.drain(..unused.min(row.len()));
                }
            }
        }
        let n = rows.len();
        let input: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(next_tokens, [n, 1]), &device);
        let pos: Tensor<2, Int> = Tensor::from_data(
            TensorData::new(
                rows.iter()
                    .map(|a| a.as_ref().map_or(0, |a| a.next_pos - 1))
                    .collect::<Vec<_>>(),
                [n, 1],
            ),
            &device,
        );
        for (row, m) in key_mask.iter_mut().enumerate() {
            m.push(rows[row].is_some());
        }
        let hidden =
            model.forward_hidden(input, pos, upload(&key_mask, &device), Some(&mut cache))?;
        logits = to_vec(model.logits(hidden))?;
    }
    Ok(true)
}
