//! The engines: one thread owns the policy, one the reward model; requests reach them through
//! channels and are batched on the device.
//!
//! Batching: the sampling thread takes every job waiting when it becomes free, groups them by
//! sampling settings (one `generate` call takes one set), and runs each group's sequences in
//! batches of at most `batch_size`. A sequence's draw depends on its own seed only, so which other
//! requests share its batch never changes a response.

use std::sync::mpsc;

use sweetspot_model::generate::{
    BatchLimits, Generation, SamplingParams, SeqRequest, generate_continuous_cancellable,
};
use sweetspot_model::{Llama, RewardInput, RewardNet, RewardOutput, Tokenizer};
use tokio::sync::oneshot;

/// Sequences to generate for one request: each prompt once per seed, with one set of settings.
pub(crate) struct GenJob {
    pub(crate) sequences: Vec<SeqRequest>,
    pub(crate) params: SamplingParams,
    pub(crate) reply: oneshot::Sender<Result<Vec<Generation>, String>>,
}

/// Inputs to score for one request.
pub(crate) struct ScoreJob {
    pub(crate) inputs: Vec<RewardInput>,
    pub(crate) reply: oneshot::Sender<Result<Vec<RewardOutput>, String>>,
}

/// What the handlers know of the policy (the model itself stays on its thread).
pub(crate) struct PolicyInfo {
    pub(crate) tokenizer: Tokenizer,
    pub(crate) max_positions: usize,
    /// The model's sampling defaults for settings a request leaves out (empty with
    /// `--generation-config vllm`).
    pub(crate) defaults: sweetspot_model::GenerationDefaults,
}

/// What the handlers know of the reward model.
pub(crate) struct RewardInfo {
    pub(crate) tokenizer: Tokenizer,
    pub(crate) max_positions: usize,
    /// Where the gating network reads (ArmoRM): the pattern's token ids.
    pub(crate) gating_pattern: Option<Vec<u32>>,
    /// The objective names (ArmoRM), empty otherwise.
    pub(crate) objectives: Vec<String>,
}

/// Runs the sampling engine on this thread until every sender is gone.
///
/// A request whose client has gone (its handler dropped, so its reply channel is closed) is
/// skipped if it has not started; a running group stops between decode steps once every one of
/// its clients has gone, so the next requests do not wait for work nobody will read.
pub(crate) fn run_policy(
    model: Llama,
    stop_ids: Vec<u32>,
    batch_size: usize,
    jobs: mpsc::Receiver<GenJob>,
) {
    while let Ok(first) = jobs.recv() {
        let mut waiting = vec![first];
        waiting.extend(jobs.try_iter());
        waiting.retain(|j| !j.reply.is_closed());
        // Group by settings, keeping arrival order within and across groups.
        let mut groups: Vec<(SamplingParams, Vec<GenJob>)> = Vec::new();
        for job in waiting {
            match groups.iter_mut().find(|(p, _)| *p == job.params) {
                Some((_, g)) => g.push(job),
                None => groups.push((job.params, vec![job])),
            }
        }
        for (params, mut group) in groups {
            group.retain(|j| !j.reply.is_closed());
            if group.is_empty() {
                continue;
            }
            let all: Vec<SeqRequest> = group
                .iter()
                .flat_map(|j| j.sequences.iter().cloned())
                .collect();
            let started = std::time::Instant::now();
            let mut out: Vec<Option<Generation>> = vec![None; all.len()];
            let mut steps = 0usize;
            let limits = BatchLimits {
                rows: batch_size.max(1),
                tokens: None,
            };
            let gone = || group.iter().all(|j| j.reply.is_closed());
            let result = generate_continuous_cancellable(
                &model,
                &all,
                &stop_ids,
                &params,
                limits,
                |_| steps += 1,
                |i, g| {
                    out[i] = Some(g);
                    Ok(())
                },
                &gone,
            );
            tracing::debug!(
                requests = group.len(),
                sequences = all.len(),
                steps,
                seconds = started.elapsed().as_secs_f64(),
                cancelled = matches!(result, Ok(false)),
                "generated"
            );
            let mut out = out.into_iter();
            for job in group {
                let n = job.sequences.len();
                let mine: Vec<Option<Generation>> = out.by_ref().take(n).collect();
                let answer = match &result {
                    Err(e) => Err(e.to_string()),
                    // Cancelled: every client has gone; nobody reads this.
                    Ok(false) => Err("cancelled: the client went away".into()),
                    Ok(true) => mine
                        .into_iter()
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| "a sequence did not finish".to_string()),
                };
                // The client may have gone: its answer is dropped.
                let _ = job.reply.send(answer);
            }
        }
    }
}

/// Runs the scoring engine on this thread until every sender is gone.
pub(crate) fn run_reward(
    net: RewardNet,
    batch_size: usize,
    max_batch_tokens: usize,
    jobs: mpsc::Receiver<ScoreJob>,
) {
    while let Ok(first) = jobs.recv() {
        let mut waiting = vec![first];
        waiting.extend(jobs.try_iter());
        let all: Vec<RewardInput> = waiting
            .iter()
            .flat_map(|j| j.inputs.iter().cloned())
            .collect();
        let result = net
            .score_all(&all, batch_size, max_batch_tokens, |_| {})
            .map_err(|e| e.to_string());
        match result {
            Ok(scores) => {
                let mut scores = scores.into_iter();
                for job in waiting {
                    let n = job.inputs.len();
                    let _ = job.reply.send(Ok(scores.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                for job in waiting {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
