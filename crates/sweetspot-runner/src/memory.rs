//! The memory plan: each node's estimated peak memory on its device, from the model's
//! `config.json` (or a GGUF header) and the node's settings, and the device's memory where it can
//! be known. `sweetspot run` and `sweetspot run --plan` refuse a node that cannot fit before the
//! first node runs.
//!
//! Invariants:
//! - The estimator ([`train`], [`generate`], [`score`]) is a pure function of a model's shape
//!   ([`Shape`]) and a node's settings: no file, no device, no global state, so it is unit-tested
//!   with plain numbers. Reading shapes, prompts and `/proc/meminfo` happens only in
//!   [`plan_memory`] and [`device_memory`].
//! - An estimate is an upper bound of the peak under the recipe's limits (longest prompt plus
//!   `max_new_tokens`, full batches), made of named parts that the plan prints; it is checked
//!   against measured peak RSS of CPU runs in docs/benchmarks.md (within 25%).
//! - The parts follow what the code holds: training keeps f32 weights, f32 gradients (twice
//!   while gradients accumulate over micro-batches), AdamW's two f32 moments, and under bf16/f16
//!   a compute copy of the weights; full DPO's reference log-probabilities are computed by the
//!   policy itself before the first step (no second model); LoRA holds the frozen base in
//!   `base_dtype`, with adapters, their gradients and moments in f32, and its reference is the
//!   base with the adapters off. Activations depend on the attention path: sweetspot's CPU
//!   kernels (f32 on the CPU) keep no `[queries, keys]` scores and no whole logits; every other
//!   path does.
//! - A model whose shape cannot be read gives an unknown estimate (never a guess), and the plan
//!   says why.

use std::path::Path;

use sweetspot_core::recipe::{AdapterConfig, RunConfig, TrainConfig};
use sweetspot_core::{Precision, Rows};

use crate::plan::{Plan, Source, Work};

/// The process itself on the CPU: the binary, its allocator and thread pools, the tokenizer
/// (measured: `sweetspot generate` of the tiny fixture, whose model is 0.1 MB, peaks at about
/// 62 MiB; see docs/benchmarks.md).
pub const PROCESS_BASELINE: u64 = 62 << 20;

/// A GPU runtime's own use of device memory (context, allocator pools, workspaces), counted
/// once per node.
pub const GPU_RUNTIME: u64 = 1 << 30;

/// The largest size field the estimator takes (2^24: a vocabulary of 16M, a width of 16M).
const MAX_SIZE: u64 = 1 << 24;

/// The sizes of a decoder that set its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// `vocab_size`.
    pub vocab: u64,
    /// `hidden_size`.
    pub hidden: u64,
    /// `intermediate_size`.
    pub intermediate: u64,
    /// `num_hidden_layers`.
    pub layers: u64,
    /// `num_attention_heads`.
    pub heads: u64,
    /// `num_key_value_heads`.
    pub kv_heads: u64,
    /// `head_dim`.
    pub head_dim: u64,
    /// `tie_word_embeddings`.
    pub tied: bool,
    /// The bytes of the model file(s) on disk, when present (they pass through memory while the
    /// model loads).
    pub file_bytes: Option<u64>,
}

impl Shape {
    /// The shape `config.json`'s text describes (`path` names it in errors).
    pub fn from_config_json(text: &str, path: &Path) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        // Sizes past any real model's would overflow the byte counts: refused by name.
        let in_range = |key: &str, n: u64| -> Result<u64, String> {
            if n <= MAX_SIZE {
                Ok(n)
            } else {
                Err(format!(
                    "{}: `{key}` = {n} is larger than {MAX_SIZE}",
                    path.display()
                ))
            }
        };
        let get = |key: &str| -> Result<u64, String> {
            let n = v.get(key).and_then(|x| x.as_u64()).ok_or_else(|| {
                format!(
                    "{}: `{key}` is missing or not a whole number",
                    path.display()
                )
            })?;
            in_range(key, n)
        };
        let opt = |key: &str| -> Result<Option<u64>, String> {
            v.get(key)
                .and_then(|x| x.as_u64())
                .map(|n| in_range(key, n))
                .transpose()
        };
        let heads = get("num_attention_heads")?;
        let hidden = get("hidden_size")?;
        if heads == 0 {
            return Err(format!("{}: `num_attention_heads` is 0", path.display()));
        }
        Ok(Self {
            vocab: get("vocab_size")?,
            hidden,
            intermediate: get("intermediate_size")?,
            layers: get("num_hidden_layers")?,
            heads,
            kv_heads: opt("num_key_value_heads")?.unwrap_or(heads),
            head_dim: opt("head_dim")?.unwrap_or(hidden / heads),
            tied: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            file_bytes: None,
        })
    }

    /// Query width (`heads * head_dim`).
    pub fn q_dim(&self) -> u64 {
        self.heads * self.head_dim
    }

    /// Key/value width (`kv_heads * head_dim`).
    pub fn kv_dim(&self) -> u64 {
        self.kv_heads * self.head_dim
    }

    /// Each linear layer of a decoder layer: its Hugging Face name, inputs, outputs.
    pub fn linears(&self) -> [(&'static str, u64, u64); 7] {
        let (h, i, q, kv) = (self.hidden, self.intermediate, self.q_dim(), self.kv_dim());
        [
            ("q_proj", h, q),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", q, h),
            ("gate_proj", h, i),
            ("up_proj", h, i),
            ("down_proj", i, h),
        ]
    }

    /// Parameters: embedding, layers (linears and two norms), final norm, untied head.
    pub fn params(&self) -> u64 {
        let layer: u64 =
            self.linears().iter().map(|(_, a, b)| a * b).sum::<u64>() + 2 * self.hidden;
        let head = if self.tied {
            0
        } else {
            self.vocab * self.hidden
        };
        self.vocab * self.hidden + self.layers * layer + self.hidden + head
    }

    /// The largest single weight (the embedding): what a load holds twice at once.
    fn largest(&self) -> u64 {
        (self.vocab * self.hidden).max(self.hidden * self.intermediate)
    }
}

/// Bytes per element of a float type.
pub fn bytes_of(p: Precision) -> u64 {
    p.bytes()
}

/// One named part of an estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What it is (`weights (bf16)`, `KV cache`).
    pub name: String,
    /// Its bytes.
    pub bytes: u64,
}

/// A node's estimated peak: its parts and what was assumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Estimate {
    /// The parts, summed for the peak.
    pub parts: Vec<Part>,
    /// Assumptions and remarks (prompt length assumed, reference held).
    pub notes: Vec<String>,
}

impl Estimate {
    fn add(&mut self, name: impl Into<String>, bytes: u64) {
        if bytes > 0 {
            self.parts.push(Part {
                name: name.into(),
                bytes,
            });
        }
    }

    /// The estimated peak.
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    /// The bytes of the parts whose name starts with `prefix`.
    pub fn part(&self, prefix: &str) -> u64 {
        self.parts
            .iter()
            .filter(|p| p.name.starts_with(prefix))
            .map(|p| p.bytes)
            .sum()
    }
}

/// Where a node runs, as far as memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The host's RAM (`cpu`): the process baseline counts, and f32 uses sweetspot's kernels.
    Cpu,
    /// A GPU's memory (`cuda`, `wgpu`): the runtime's reserve counts, attention keeps scores.
    Gpu,
}

impl Place {
    /// The place of a device name (`cpu`, `cuda:0`, `wgpu`, `wgpu:cpu`).
    pub fn of(device: &str) -> Self {
        if device == "cpu" || device.starts_with("cpu:") {
            Self::Cpu
        } else {
            Self::Gpu
        }
    }

    fn overhead(self) -> (&'static str, u64) {
        match self {
            Self::Cpu => ("process (binary, runtime, tokenizer)", PROCESS_BASELINE),
            Self::Gpu => ("GPU runtime reserve", GPU_RUNTIME),
        }
    }
}

/// LoRA as the estimator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lora {
    /// The rank.
    pub r: u64,
    /// The adapted linear layers, by Hugging Face name.
    pub modules: Vec<String>,
    /// How the frozen base is held.
    pub base_dtype: Precision,
}

impl Lora {
    /// From `[train.adapter]`.
    pub fn of(a: &AdapterConfig) -> Self {
        Self {
            r: a.r as u64,
            modules: a.modules(),
            base_dtype: a.base_dtype,
        }
    }

    /// Adapter parameters: `r * (in + out)` per adapted linear per layer.
    pub fn params(&self, s: &Shape) -> u64 {
        let per_layer: u64 = s
            .linears()
            .iter()
            .filter(|(n, _, _)| self.modules.iter().any(|m| m == n))
            .map(|(_, a, b)| self.r * (a + b))
            .sum();
        per_layer * s.layers
    }
}

/// A training node's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainSetup {
    /// Compute type (`[train] dtype`).
    pub dtype: Precision,
    /// Pairs per optimizer step.
    pub batch_size: u64,
    /// Pairs per forward/backward pass (each pair is two sequences).
    pub micro_batch_size: u64,
    /// Longest sequence (prompt plus response) in tokens.
    pub seq_len: u64,
    /// `[train] gradient_checkpointing`.
    pub checkpointing: bool,
    /// `[train.adapter]`.
    pub lora: Option<Lora>,
    /// Data-parallel replicas (`[train] devices`; 1 on one device): the estimate is per device.
    pub replicas: u64,
}

impl TrainSetup {
    /// From a `[train]` table and the longest sequence.
    pub fn of(t: &TrainConfig, seq_len: u64) -> Self {
        Self {
            // With LoRA the forward computes in the base's type (the adapters in f32).
            dtype: t.adapter.as_ref().map_or(t.dtype, |a| a.base_dtype),
            batch_size: t.batch_size as u64,
            micro_batch_size: t.micro_batch_size as u64,
            seq_len,
            checkpointing: t.gradient_checkpointing,
            lora: t.adapter.as_ref().map(Lora::of),
            replicas: t
                .data_parallel_devices()
                .map_or(1, |d| d.len().max(1) as u64),
        }
    }
}

/// Activation bytes per token per layer that a training forward keeps for the backward.
fn layer_activations(s: &Shape, seq: u64, cb: u64, fused: bool, checkpointing: bool) -> u64 {
    let (h, i, q, kv) = (s.hidden, s.intermediate, s.q_dim(), s.kv_dim());
    let kept = match (fused, checkpointing) {
        // Every op's saved inputs: norms, projections, RoPE, SwiGLU, residuals.
        (false, false) => 6 * h + 4 * q + 4 * kv + 5 * i,
        // sweetspot's kernels: attention keeps q, k, v, its output and a log-sum-exp per row;
        // SwiGLU keeps gate and up.
        (true, false) => 6 * h + 3 * q + 4 * kv + 3 * i,
        // burn's checkpointing keeps the outputs of compute-bound ops (matmuls) and recomputes
        // the memory-bound ones.
        (_, true) => 2 * h + 2 * q + 2 * kv + 2 * i,
    };
    let scores = if fused {
        0
    } else if checkpointing {
        // The scores (a matmul's output) are kept; the softmax is recomputed.
        s.heads * seq * cb
    } else {
        // Scores, masked f32 scores, f32 probabilities and their cast.
        s.heads * seq * (8 + cb)
    };
    kept * cb + scores
}

/// The name of a training's activations part.
fn activations_label(t: &TrainSetup) -> String {
    format!(
        "activations ({} x 2 x {} tokens{})",
        t.micro_batch_size,
        t.seq_len,
        if t.checkpointing {
            ", checkpointed"
        } else {
            ""
        }
    )
}

/// The estimated peak of a DPO training node (full or LoRA).
pub fn train(s: &Shape, t: &TrainSetup, place: Place) -> Estimate {
    let mut e = Estimate::default();
    let p = s.params();
    let cb = bytes_of(t.dtype);
    let fused = place == Place::Cpu && t.dtype == Precision::F32;
    // Data parallelism: each device a replica of the weights with its share of each step's
    // pairs; burn's sharded step keeps 1/n of the updated weights, the reduced gradients and
    // AdamW's moments on each device.
    let n = t.replicas.max(1);
    let accumulating = t.batch_size.div_ceil(n) > t.micro_batch_size;
    let grad_copies = if accumulating { 2 } else { 1 };
    let sharded = |e: &mut Estimate, what: &str, trained: u64| {
        if n > 1 {
            e.add(
                format!("{what}AdamW moments (2 x f32, / {n} by the sharded step)"),
                (trained * 8).div_ceil(n),
            );
            e.add(
                format!("{what}updated weights and reduced gradients (2 x f32, / {n})"),
                (trained * 8).div_ceil(n),
            );
        } else {
            e.add(format!("{what}AdamW moments (2 x f32)"), trained * 8);
        }
    };
    match &t.lora {
        None => {
            e.add(
                if n > 1 {
                    "weights (f32, this device's replica)"
                } else {
                    "weights (f32 master)"
                },
                p * 4,
            );
            if cb != 4 {
                e.add(format!("weights' {} compute copy", t.dtype), p * cb);
            }
            e.add(
                if accumulating {
                    "gradients (f32, accumulated + micro-batch)"
                } else {
                    "gradients (f32)"
                },
                p * 4 * grad_copies,
            );
            sharded(&mut e, "", p);
            e.notes.push(
                "reference: log-probabilities precomputed by the policy before the first step \
                 (no second model)"
                    .into(),
            );
        }
        Some(l) => {
            let a = l.params(s);
            let bb = bytes_of(l.base_dtype);
            e.add(format!("frozen base ({})", l.base_dtype), p * bb);
            if cb != bb {
                e.add(format!("base's {} compute copy", t.dtype), p * cb);
            }
            e.add(format!("LoRA r={} adapters (f32)", l.r), a * 4);
            e.add("adapter gradients (f32)", a * 4 * grad_copies);
            sharded(&mut e, "adapter ", a);
            e.notes.push(format!(
                "LoRA: {a} trainable parameters on {}; reference = the base with the adapters \
                 off (no copy)",
                l.modules.join(", ")
            ));
        }
    }
    // Each pair is a chosen and a rejected sequence.
    let rows = 2 * t.micro_batch_size * t.seq_len;
    let per_token = layer_activations(s, t.seq_len, cb, fused, t.checkpointing);
    let mut act = rows * per_token * s.layers + rows * s.hidden * cb;
    if t.checkpointing {
        // The backward recomputes one layer's activations at a time.
        act += rows * layer_activations(s, t.seq_len, cb, fused, false);
    }
    e.add(activations_label(t), act);
    // Log-probabilities of the tokens: whole logits (and their log-softmax, f32) except under
    // sweetspot's fused kernel, which makes them a block of rows at a time.
    let logits = if fused {
        rows * s.hidden * 4
    } else {
        rows * s.vocab * (8 + cb)
    };
    e.add("logits", logits);
    let (name, bytes) = place.overhead();
    e.add(name, bytes);
    e
}

/// The estimated peak per process of a training under `[train] backend = "trl"`: TRL's
/// `DPOTrainer` in PyTorch under `accelerate launch`, `acc` its accelerate config. DeepSpeed
/// ZeRO shares the states among the processes (stage 1 the optimizer's, 2 also the gradients,
/// 3 also the weights); PyTorch's attention (SDPA) keeps no scores; Hugging Face's gradient
/// checkpointing keeps each layer's input and recomputes one layer at a time; TRL holds a
/// frozen reference model beside the policy (sharded like it under ZeRO-3).
pub fn train_trl(
    s: &Shape,
    t: &TrainSetup,
    place: Place,
    acc: &crate::trl::Accelerate,
) -> Estimate {
    let mut e = Estimate::default();
    let p = s.params();
    let cb = bytes_of(t.dtype);
    let n = acc.processes.max(1) as u64;
    let stage = acc.zero_stage.unwrap_or(0);
    let shard = |bytes: u64, from: u8| {
        if stage >= from {
            bytes.div_ceil(n)
        } else {
            bytes
        }
    };
    let over = |from: u8| {
        if stage >= from && n > 1 {
            format!(" / {n} by ZeRO-{stage}")
        } else {
            String::new()
        }
    };
    let mixed = cb != 4;
    let optimizer_host = acc.zero_stage.is_some() && acc.offload_optimizer;
    let params_host = stage >= 3 && acc.offload_param;
    if mixed && acc.zero_stage.is_some() {
        // DeepSpeed's bf16/fp16: the model in the compute type, f32 master and states.
        if !params_host {
            e.add(
                format!("weights ({}{})", t.dtype, over(3)),
                shard(p * cb, 3),
            );
        }
        if !optimizer_host {
            e.add(format!("f32 master weights{}", over(1)), shard(p * 4, 1));
            e.add(format!("gradients (f32{})", over(2)), shard(p * 4, 2));
            e.add(
                format!("AdamW moments (2 x f32{})", over(1)),
                shard(p * 8, 1),
            );
        }
    } else {
        // PyTorch autocast (or f32): f32 weights, gradients and states, cast per operation.
        e.add(format!("weights (f32{})", over(3)), shard(p * 4, 3));
        e.add(format!("gradients (f32{})", over(2)), shard(p * 4, 2));
        if !optimizer_host {
            e.add(
                format!("AdamW moments (2 x f32{})", over(1)),
                shard(p * 8, 1),
            );
        }
    }
    if optimizer_host || params_host {
        e.notes.push(
            "DeepSpeed offload: the offloaded states are in host memory (not counted here)".into(),
        );
    }
    if stage >= 3 && n > 1 {
        // A layer's weights gathered whole for its forward and backward (and the next one
        // prefetched).
        let layer = (p - s.vocab * s.hidden * 2) / s.layers.max(1);
        e.add("ZeRO-3 gathered layers (2 x one layer)", 2 * layer * cb);
    }
    if !params_host {
        e.add(
            format!("TRL's reference model ({}{})", t.dtype, over(3)),
            shard(p * cb, 3),
        );
    }
    // Chosen and rejected concatenated in one forward.
    let rows = 2 * t.micro_batch_size * t.seq_len;
    let layer = layer_activations(s, t.seq_len, cb, true, false);
    let act = if t.checkpointing {
        rows * s.hidden * cb * s.layers + rows * layer
    } else {
        rows * layer * s.layers
    };
    e.add(activations_label(t), act);
    e.add("logits", rows * s.vocab * (8 + cb));
    let (name, bytes) = place.overhead();
    e.add(name, bytes);
    e.notes.push(match acc.zero_stage {
        Some(z) => {
            format!("TRL under DeepSpeed ZeRO-{z} over {n} process(es): per process (one GPU each)")
        }
        None => format!("TRL over {n} process(es) without DeepSpeed: per process"),
    });
    e
}

/// An inference node's settings (generation or scoring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InferSetup {
    /// The weights' type.
    pub dtype: Precision,
    /// Sequences at once.
    pub batch_size: u64,
    /// Padded tokens (key/value slots) at once, when bounded.
    pub max_batch_tokens: Option<u64>,
    /// Longest prompt in tokens.
    pub prompt_tokens: u64,
    /// Tokens generated per sequence (for scoring: the longest response).
    pub new_tokens: u64,
    /// 8-bit copies of the projections beside the weights (`quantize`).
    pub quantize: Option<sweetspot_core::Quantize>,
}

/// Weights and the load's transient: a GGUF is read whole and dequantized to f32 before the
/// cast; a safetensors file passes through memory once.
fn weights(e: &mut Estimate, s: &Shape, g: &InferSetup, place: Place, gguf: bool) -> u64 {
    let (dtype, p) = (g.dtype, s.params());
    e.add(format!("weights ({dtype})"), p * bytes_of(dtype));
    if let Some(q) = g.quantize {
        // Every projection (and the output projection) again, 32 bytes and a 4-byte scale and
        // correction per block of 32.
        let attn =
            s.hidden * (s.heads + 2 * s.kv_heads) * s.head_dim + s.heads * s.head_dim * s.hidden;
        let mlp = 3 * s.hidden * s.intermediate;
        let projections = s.layers * (attn + mlp) + s.vocab * s.hidden;
        e.add(
            format!("{q} copies of the projections"),
            projections / 32 * 40,
        );
    }
    if place == Place::Gpu {
        return 0;
    }
    let file = s.file_bytes.unwrap_or(p * 2);
    let mut load = file + s.largest() * 4;
    if gguf && dtype != Precision::F32 {
        load += p * 4;
    }
    load
}

/// The estimated peak of a generate node: weights, the KV cache of a full batch at the longest
/// prompt plus `max_new_tokens`, the prefill's activations and the sampling logits.
pub fn generate(s: &Shape, g: &InferSetup, place: Place, gguf: bool) -> Estimate {
    let mut e = Estimate::default();
    let wb = bytes_of(g.dtype);
    let load = weights(&mut e, s, g, place, gguf);
    let per_seq = g.prompt_tokens + g.new_tokens;
    // Each row's buffer holds its slots rounded up to the cache's room.
    let per_buffer =
        sweetspot_core::rows::cache_slots(usize::try_from(per_seq).unwrap_or(usize::MAX)) as u64;
    let mut slots = g.batch_size * per_buffer;
    if let Some(m) = g.max_batch_tokens {
        slots = slots.min(m.max(per_seq).div_ceil(per_seq) * per_buffer);
    }
    let kv_layer = 2 * s.kv_dim() * slots * g.dtype.kv_cache_type(place == Place::Cpu).bytes();
    let kv = kv_layer * s.layers;
    // Growing a layer's cache copies it once.
    let run = kv + kv_layer + prefill(s, g.batch_size, g.prompt_tokens, wb, place);
    let logits = g.batch_size * s.vocab * 4 * 4;
    e.add(
        format!(
            "KV cache ({} x {} tokens, {})",
            g.batch_size,
            per_seq,
            g.dtype.kv_cache_type(place == Place::Cpu)
        ),
        kv + kv_layer,
    );
    e.add(
        "prefill activations and logits",
        run - kv - kv_layer + logits,
    );
    let (name, bytes) = place.overhead();
    e.add(name, bytes);
    // Loading comes before the cache exists: the larger of the two phases counts.
    if load > run + logits {
        e.add(
            "load transient (file and dequantization)",
            load - run - logits,
        );
    }
    e
}

/// One forward pass's live activations over `batch` sequences of `tokens`.
fn prefill(s: &Shape, batch: u64, tokens: u64, wb: u64, place: Place) -> u64 {
    let (h, i, q, kv) = (s.hidden, s.intermediate, s.q_dim(), s.kv_dim());
    let rows = batch * tokens;
    let live = rows * (3 * h + 3 * i + q + 2 * kv) * wb;
    let scores = if place == Place::Cpu {
        0
    } else {
        batch * s.heads * tokens * tokens * (8 + wb)
    };
    live + scores
}

/// The estimated peak of a score node: weights and the forward passes of the batches scored at
/// once (`sweetspot_model::reward::CPU_CONCURRENT_BATCHES` on the CPU, one elsewhere) at the
/// longest sequence, and on the CPU the shared prompt prefixes held
/// (`sweetspot_model::reward::CPU_PREFIXES_HELD`).
pub fn score(s: &Shape, g: &InferSetup, place: Place, gguf: bool) -> Estimate {
    let mut e = Estimate::default();
    let wb = bytes_of(g.dtype);
    let load = weights(&mut e, s, g, place, gguf);
    let seq = g.prompt_tokens + g.new_tokens;
    let mut batch = g.batch_size;
    if let Some(m) = g.max_batch_tokens {
        batch = batch.min((m / seq.max(1)).max(1));
    }
    let at_once = if place == Place::Cpu {
        sweetspot_model::reward::CPU_CONCURRENT_BATCHES as u64
    } else {
        1
    };
    let run = at_once * prefill(s, batch, seq, wb, place);
    let what = if at_once > 1 {
        format!("activations ({at_once} batches at once, {batch} x {seq} tokens each)")
    } else {
        format!("activations ({batch} x {seq} tokens)")
    };
    e.add(what, run);
    if place == Place::Cpu {
        // Shared prompt prefixes: each group's keys and values of every layer, in f32 (the CPU
        // attention kernel's type).
        let held = sweetspot_model::reward::CPU_PREFIXES_HELD as u64;
        let slots = sweetspot_model::reward::prefix_slots(g.prompt_tokens as usize) as u64;
        e.add(
            format!("shared prompt prefixes ({held} x {slots} key/value slots)"),
            held * slots * 2 * s.layers * s.kv_dim() * 4,
        );
    }
    let (name, bytes) = place.overhead();
    e.add(name, bytes);
    if load > run {
        e.add("load transient (file and dequantization)", load - run);
    }
    e
}

/// Formats bytes as GB (decimal, as GPU memory is sold) or MB below 1 GB.
pub fn human(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.0} MB", bytes as f64 / 1e6)
    }
}

// ---------------------------------------------------------------------------------------------
// The plan's side: shapes, prompts and devices read from disk.
// ---------------------------------------------------------------------------------------------

/// The device's memory and where the number comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes, when known.
    pub bytes: Option<u64>,
    /// Where it comes from (`[run] device_memory`, `/proc/meminfo MemAvailable`), or why it is
    /// unknown.
    pub source: String,
}

/// The memory of `device`: `[run] device_memory` when given; for `cpu` the host's available
/// RAM (`/proc/meminfo`); otherwise unknown (burn 0.22 learns a GPU's memory only by starting
/// its runtime on it, which planning does not do).
pub fn device_memory(run: &RunConfig, device: &str) -> DeviceMemory {
    if let Some(b) = run.device_memory {
        return DeviceMemory {
            bytes: Some(b.0),
            source: "the recipe's run.device_memory".into(),
        };
    }
    if Place::of(device) == Place::Cpu {
        if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
            for key in ["MemAvailable", "MemTotal"] {
                if let Some(kib) = meminfo(&text, key) {
                    return DeviceMemory {
                        bytes: Some(kib * 1024),
                        source: format!("host RAM, /proc/meminfo {key}"),
                    };
                }
            }
        }
        return DeviceMemory {
            bytes: None,
            source: "unknown (no /proc/meminfo); set device_memory in the recipe's run table"
                .into(),
        };
    }
    DeviceMemory {
        bytes: None,
        source: format!(
            "unknown for `{device}`; set device_memory in the recipe's run table (such as \"80GB\")"
        ),
    }
}

/// A `/proc/meminfo` value in KiB.
fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The shape of a model folder (its `config.json`) or GGUF file (its header), with the bytes
/// of its weight files when present; `Err` says why it is unknown.
pub fn read_shape(model: &Path) -> Result<Shape, String> {
    if is_gguf(model) {
        if !model.exists() {
            return Err(format!("{} does not exist", model.display()));
        }
        let g = sweetspot_model::gguf::Gguf::open_header(model).map_err(|e| e.to_string())?;
        let c = g.llama_config().map_err(|e| e.to_string())?;
        return Ok(Shape {
            vocab: c.vocab_size as u64,
            hidden: c.hidden_size as u64,
            intermediate: c.intermediate_size as u64,
            layers: c.num_hidden_layers as u64,
            heads: c.num_attention_heads as u64,
            kv_heads: c.kv_heads() as u64,
            head_dim: c.head_dim() as u64,
            tied: c.tie_word_embeddings,
            file_bytes: std::fs::metadata(model).ok().map(|m| m.len()),
        });
    }
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|_| {
        if model.exists() {
            format!("{} does not exist", config.display())
        } else {
            format!("{} does not exist", model.display())
        }
    })?;
    let mut shape = Shape::from_config_json(&text, &config)?;
    let weights: u64 = std::fs::read_dir(model)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|f| f.path().extension().is_some_and(|e| e == "safetensors"))
                .filter_map(|f| f.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0);
    shape.file_bytes = (weights > 0).then_some(weights);
    Ok(shape)
}

fn is_gguf(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Prompt tokens assumed when the prompts cannot be read.
pub const ASSUMED_PROMPT_TOKENS: u64 = 512;

/// The chat template's tokens around a prompt, added to its estimate.
const TEMPLATE_TOKENS: u64 = 32;

/// The longest prompt of a prompts file in tokens, estimated from its characters (about 4 per
/// token, plus the chat template); `None` when the file cannot be read.
pub fn prompt_tokens(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let longest = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("prompt").map(|p| p.to_string().len() as u64))
        .max()?;
    Some(longest.div_ceil(4) + TEMPLATE_TOKENS)
}

/// A node's memory in the plan.
#[derive(Debug, Clone)]
pub struct NodeMemory {
    /// The estimate, or why there is none.
    pub estimate: Result<Estimate, String>,
    /// The device it runs on.
    pub device: String,
}

/// Sequence settings found in the plan: the generating sampler's budget.
struct Budget {
    prompt_tokens: u64,
    new_tokens: u64,
    notes: Vec<String>,
}

fn budget_of(plan: &Plan, gen_node: Option<usize>) -> Budget {
    let mut notes = Vec::new();
    let found = gen_node.and_then(|g| match &plan.nodes[g].work {
        Work::Generate {
            prompts, sampler, ..
        } => Some((prompts.clone(), sampler.memory_use())),
        _ => None,
    });
    let (prompts, mem) = match found {
        Some((p, m)) => (Some(p), m),
        None => (None, None),
    };
    let prompt_tokens = match prompts.as_deref().and_then(prompt_tokens) {
        Some(t) => t,
        None => {
            notes.push(format!(
                "prompt length unknown: {ASSUMED_PROMPT_TOKENS} tokens assumed"
            ));
            ASSUMED_PROMPT_TOKENS
        }
    };
    let new_tokens = match mem {
        Some(m) => m.max_new_tokens as u64,
        None => {
            notes.push("response length unknown: 1024 tokens assumed".into());
            1024
        }
    };
    Budget {
        prompt_tokens,
        new_tokens,
        notes,
    }
}

/// The generate node a node's data comes from, following sources upstream.
fn generating(plan: &Plan, i: usize) -> Option<usize> {
    let mut at = i;
    for _ in 0..plan.nodes.len() {
        let next = match &plan.nodes[at].work {
            Work::Generate { .. } => return Some(at),
            Work::Score { input, .. } | Work::Pairs { input, .. } => input,
            Work::Train { pairs, .. } => pairs,
            Work::Reference { pairs, .. } => pairs.first()?,
            _ => return None,
        };
        match next {
            Source::Node(u, _) => at = *u,
            Source::File(_) => return None,
        }
    }
    None
}

/// The model a source names: a user's model, or (for a node's trained policy) the model that
/// policy started from, which has its shape.
fn model_of(plan: &Plan, s: &Source, start: Option<&Path>) -> Option<std::path::PathBuf> {
    match s {
        Source::File(p) => Some(p.clone()),
        Source::Node(u, _) => match &plan.nodes[*u].work {
            Work::Train { policy, .. } => model_of(plan, policy, start),
            _ => start.map(Path::to_path_buf),
        },
    }
}

/// Every node's estimated peak memory; `None` for nodes that run no model (pairs, eval).
/// `start_policy` is the model training starts from (and eval's baseline).
pub fn plan_memory(plan: &Plan, start_policy: Option<&Path>) -> Vec<Option<NodeMemory>> {
    let device = plan
        .devices
        .first()
        .cloned()
        .unwrap_or_else(|| "cpu".into());
    let place = Place::of(&device);
    let mut shapes: std::collections::BTreeMap<std::path::PathBuf, Result<Shape, String>> =
        std::collections::BTreeMap::new();
    let mut shape_of = |p: &Path| {
        shapes
            .entry(p.to_path_buf())
            .or_insert_with(|| read_shape(&plan.base_dir.join(p)))
            .clone()
    };
    let mut out = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        let estimate = match &node.work {
            Work::Generate { sampler, model, .. } => {
                let Some(m) = sampler.memory_use() else {
                    out.push(Some(NodeMemory {
                        estimate: Err(format!(
                            "the `{}` sampler runs no local model",
                            sampler.plugin_type()
                        )),
                        device: device.clone(),
                    }));
                    continue;
                };
                let path = match model {
                    Some(s) => model_of(plan, s, start_policy),
                    None => Some(m.model.clone()),
                };
                let b = budget_of(plan, Some(i));
                match path {
                    Some(p) => shape_of(&p).map(|s| {
                        let (rows, auto) = match m.batch_size {
                            Rows::Fixed(n) => (n as u64, None),
                            Rows::Auto => {
                                let c = plan_rows(plan, &s, &m, b.prompt_tokens, place);
                                (c.rows as u64, Some(c))
                            }
                        };
                        let setup = InferSetup {
                            dtype: m.dtype,
                            batch_size: rows,
                            max_batch_tokens: m.max_batch_tokens.map(|t| t as u64),
                            prompt_tokens: b.prompt_tokens,
                            new_tokens: m.max_new_tokens as u64,
                            quantize: m.quantize,
                        };
                        let mut e = generate(&s, &setup, place, is_gguf(&p));
                        if let Some(c) = auto {
                            e.notes.push(format!(
                                "batch_size = \"auto\": {} rows ({})",
                                c.rows, c.why
                            ));
                        }
                        e.notes
                            .extend(b.notes.into_iter().filter(|n| n.contains("prompt")));
                        e
                    }),
                    None => Err("the model is not known".into()),
                }
            }
            Work::Score { reward, .. } => {
                let Some(m) = reward.memory_use() else {
                    out.push(Some(NodeMemory {
                        estimate: Err(format!(
                            "the `{}` reward model's memory is not known",
                            reward.plugin_type()
                        )),
                        device: device.clone(),
                    }));
                    continue;
                };
                let b = budget_of(plan, generating(plan, i));
                let setup = InferSetup {
                    dtype: m.dtype,
                    batch_size: match m.batch_size {
                        Rows::Fixed(n) => n as u64,
                        Rows::Auto => sweetspot_core::rows::AUTO_ROWS_UNKNOWN as u64,
                    },
                    max_batch_tokens: m.max_batch_tokens.map(|t| t as u64),
                    prompt_tokens: b.prompt_tokens,
                    new_tokens: b.new_tokens,
                    quantize: m.quantize,
                };
                shape_of(&m.model).map(|s| {
                    let mut e = score(&s, &setup, place, is_gguf(&m.model));
                    e.notes.extend(b.notes);
                    e
                })
            }
            Work::Train { policy, config, .. } => {
                let b = budget_of(plan, generating(plan, i));
                let setup = TrainSetup::of(config, b.prompt_tokens + b.new_tokens);
                let trl = match trl_accelerate(plan, config) {
                    Ok(a) => a,
                    Err(m) => {
                        out.push(Some(NodeMemory {
                            estimate: Err(m),
                            device: device.clone(),
                        }));
                        continue;
                    }
                };
                match model_of(plan, policy, start_policy) {
                    Some(p) => shape_of(&p).map(|s| {
                        let mut e = match &trl {
                            Some(a) => train_trl(&s, &setup, place, a),
                            None => train(&s, &setup, place),
                        };
                        e.notes.extend(b.notes);
                        e
                    }),
                    None => Err("the policy is not known".into()),
                }
            }
            Work::Reference { policy, config, .. } => {
                // The trainings' frozen model, held as they hold it, over a batch of twice their
                // micro-batch, without gradients.
                let b = budget_of(plan, generating(plan, i));
                let (held, copy) = match &config.adapter {
                    Some(a) => (a.base_dtype, None),
                    None => (
                        Precision::F32,
                        (config.dtype != Precision::F32).then_some(config.dtype),
                    ),
                };
                let setup = InferSetup {
                    dtype: held,
                    batch_size: 2 * config.micro_batch_size.min(config.batch_size) as u64,
                    max_batch_tokens: None,
                    prompt_tokens: b.prompt_tokens,
                    new_tokens: b.new_tokens,
                    quantize: None,
                };
                match model_of(plan, policy, start_policy) {
                    Some(p) => shape_of(&p).map(|s| {
                        let mut e = score(&s, &setup, place, is_gguf(&p));
                        if let Some(c) = copy {
                            e.add(
                                format!("weights' {c} compute copy"),
                                s.params() * bytes_of(c),
                            );
                        }
                        e.notes.extend(b.notes);
                        e
                    }),
                    None => Err("the policy is not known".into()),
                }
            }
            Work::Pairs { .. } | Work::Eval { .. } | Work::Compose { .. } => {
                out.push(None);
                continue;
            }
        };
        out.push(Some(NodeMemory {
            estimate,
            device: device.clone(),
        }));
    }
    out
}

/// The rows a sampler with `batch_size = "auto"` would pick on the plan's device, as the
/// sampler picks them (sweetspot_core::rows): from `[run] device_memory`, else on a CPU the
/// host's available RAM less the weights.
fn plan_rows(
    plan: &Plan,
    s: &Shape,
    m: &sweetspot_core::InferenceMemory,
    prompt_tokens: u64,
    place: Place,
) -> sweetspot_core::rows::RowChoice {
    use sweetspot_core::rows::*;
    let weights = s.params() * bytes_of(m.dtype);
    // Not loaded yet: the RAM beside the weights is the available RAM less them.
    let (cache_bytes, cap) = cache_budget(
        place == Place::Cpu,
        plan.device_memory,
        available_ram().map(|b| b.saturating_sub(weights)),
        weights,
    );
    auto_rows(&RowBudget {
        kv_bytes_per_token: 2
            * s.kv_dim()
            * s.layers
            * m.dtype.kv_cache_type(place == Place::Cpu).bytes(),
        tokens_per_row: prompt_tokens + m.max_new_tokens as u64,
        cache_bytes,
        max_batch_tokens: m.max_batch_tokens,
        cap,
        sequences: usize::MAX,
    })
}

/// The accelerate config of a `[train] backend = "trl"` training (`None` for the native
/// trainer; one process without DeepSpeed when the recipe gives no `accelerate_config`).
pub fn trl_accelerate(
    plan: &Plan,
    config: &TrainConfig,
) -> Result<Option<crate::trl::Accelerate>, String> {
    if config.backend != sweetspot_core::recipe::TrainBackend::Trl {
        return Ok(None);
    }
    match &config.accelerate_config {
        Some(a) => crate::trl::Accelerate::read(&plan.base_dir.join(a))
            .map(Some)
            .map_err(|e| format!("`accelerate_config`: {e}")),
        None => Ok(Some(crate::trl::Accelerate {
            processes: 1,
            zero_stage: None,
            offload_optimizer: false,
            offload_param: false,
        })),
    }
}

/// What would fit instead of a training setup that does not: each change on its own (and LoRA
/// with everything), with its estimate.
pub fn train_alternatives(s: &Shape, t: &TrainSetup, place: Place, limit: u64) -> Vec<String> {
    let mut tries: Vec<(String, TrainSetup)> = Vec::new();
    if !t.checkpointing {
        tries.push((
            "gradient_checkpointing = true".into(),
            TrainSetup {
                checkpointing: true,
                ..t.clone()
            },
        ));
    }
    if t.micro_batch_size > 1 {
        tries.push((
            "micro_batch_size = 1".into(),
            TrainSetup {
                micro_batch_size: 1,
                ..t.clone()
            },
        ));
    }
    if t.dtype == Precision::F32 {
        tries.push((
            "dtype = \"bf16\"".into(),
            TrainSetup {
                dtype: Precision::Bf16,
                ..t.clone()
            },
        ));
    }
    if t.lora.is_none() {
        let lora = Lora {
            r: 16,
            modules: sweetspot_core::recipe::LINEAR_MODULES
                .iter()
                .map(|m| m.to_string())
                .collect(),
            base_dtype: Precision::Bf16,
        };
        let also = if t.dtype == Precision::Bf16 {
            ""
        } else {
            " (and dtype = \"bf16\")"
        };
        tries.push((
            format!(
                "[train.adapter] type = \"lora\", r = 16, all-linear, base_dtype = \"bf16\"{also}"
            ),
            TrainSetup {
                lora: Some(lora.clone()),
                dtype: Precision::Bf16,
                ..t.clone()
            },
        ));
        tries.push((
            "that LoRA with gradient_checkpointing = true and micro_batch_size = 1".into(),
            TrainSetup {
                lora: Some(lora),
                dtype: Precision::Bf16,
                checkpointing: true,
                micro_batch_size: 1,
                ..t.clone()
            },
        ));
    }
    tries
        .into_iter()
        .map(|(what, setup)| {
            let total = train(s, &setup, place).total();
            let verdict = if total <= limit {
                "fits"
            } else {
                "does not fit"
            };
            format!("{what}: {} ({verdict})", human(total))
        })
        .collect()
}

/// The nodes that cannot fit on their device: one message each, with the numbers and what
/// would fit. `Ok` when every known estimate fits or the device's memory is unknown.
pub fn check_fit(
    plan: &Plan,
    memory: &[Option<NodeMemory>],
    device: &DeviceMemory,
    start_policy: Option<&Path>,
) -> Result<(), String> {
    let Some(limit) = device.bytes else {
        return Ok(());
    };
    let place = Place::of(plan.devices.first().map_or("cpu", String::as_str));
    let mut lines: Vec<(Vec<&str>, String)> = Vec::new();
    for (i, m) in memory.iter().enumerate() {
        let Some(Ok(e)) = m.as_ref().map(|m| &m.estimate) else {
            continue;
        };
        let total = e.total();
        if total <= limit {
            continue;
        }
        let node = &plan.nodes[i];
        let mut line = format!(
            "needs about {} at its peak, more than the {} of `{}` ({}):",
            human(total),
            human(limit),
            memory[i].as_ref().map_or("cpu", |m| m.device.as_str()),
            device.source
        );
        for p in &e.parts {
            line.push_str(&format!("\n      {}: {}", p.name, human(p.bytes)));
        }
        match &node.work {
            Work::Train { config, .. }
                if config.backend == sweetspot_core::recipe::TrainBackend::Trl =>
            {
                line.push_str(
                    "\n    instead: more processes (`num_processes`) under DeepSpeed ZeRO-3 in \
                     the accelerate config, `offload_optimizer_device: cpu`, micro_batch_size \
                     = 1, or gradient_checkpointing = true",
                );
            }
            Work::Train { policy, config, .. } => {
                let shape = model_of(plan, policy, start_policy)
                    .and_then(|p| read_shape(&plan.base_dir.join(p)).ok());
                if let Some(s) = shape {
                    let b = budget_of(plan, generating(plan, i));
                    let setup = TrainSetup::of(config, b.prompt_tokens + b.new_tokens);
                    line.push_str("\n    instead:");
                    for alt in train_alternatives(&s, &setup, place, limit) {
                        line.push_str(&format!("\n      {alt}"));
                    }
                }
            }
            _ => line.push_str(
                "\n    instead: a smaller batch_size or max_batch_tokens, max_new_tokens, or \
                 dtype = \"bf16\"",
            ),
        }
        // Stages with the same numbers are named together.
        match lines.iter_mut().find(|(_, l)| *l == line) {
            Some((labels, _)) => labels.push(node.label.as_str()),
            None => lines.push((vec![node.label.as_str()], line)),
        }
    }
    let count: usize = lines.iter().map(|(l, _)| l.len()).sum();
    if count == 0 {
        return Ok(());
    }
    let text: Vec<String> = lines
        .iter()
        .map(|(labels, line)| match labels.as_slice() {
            [one] => format!("`{one}` {line}"),
            many => format!("`{}` and {} more like it {line}", many[0], many.len() - 1),
        })
        .collect();
    Err(format!(
        "{count} of {} stages cannot fit in the device's memory:\n  {}",
        plan.nodes.len(),
        text.join("\n  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Meta-Llama-3-8B-Instruct's sizes.
    fn llama3_8b() -> Shape {
        Shape {
            vocab: 128_256,
            hidden: 4096,
            intermediate: 14_336,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            tied: false,
            file_bytes: None,
        }
    }

    fn paper(lora: Option<Lora>, micro: u64, ckpt: bool) -> TrainSetup {
        TrainSetup {
            dtype: Precision::Bf16,
            batch_size: 128,
            micro_batch_size: micro,
            seq_len: 2048 + 512,
            checkpointing: ckpt,
            lora,
            replicas: 1,
        }
    }

    fn lora16() -> Lora {
        Lora {
            r: 16,
            modules: sweetspot_core::recipe::LINEAR_MODULES
                .iter()
                .map(|m| m.to_string())
                .collect(),
            base_dtype: Precision::Bf16,
        }
    }

    #[test]
    fn parameter_count_matches_llama3_8b() {
        // 8,030,261,248 parameters (Meta's model card: 8.03B).
        assert_eq!(llama3_8b().params(), 8_030_261_248);
    }

    #[test]
    fn full_dpo_of_8b_in_bf16_does_not_fit_80gb() {
        let e = train(&llama3_8b(), &paper(None, 2, true), Place::Gpu);
        // f32 weights, 2 x f32 gradients, 2 moments, the bf16 copy: 22 bytes per parameter.
        assert_eq!(e.part("weights (f32"), 8_030_261_248 * 4);
        assert_eq!(e.part("AdamW"), 8_030_261_248 * 8);
        assert!(e.total() > 80_000_000_000, "{}", human(e.total()));
        // Even before any activation.
        let states: u64 = e
            .parts
            .iter()
            .filter(|p| !p.name.starts_with("activations") && !p.name.starts_with("logits"))
            .map(|p| p.bytes)
            .sum();
        assert!(states > 160_000_000_000);
    }

    #[test]
    fn lora_r16_with_bf16_base_is_under_40gb_of_states_and_fits_80gb() {
        let e = train(&llama3_8b(), &paper(Some(lora16()), 1, true), Place::Gpu);
        let a = lora16().params(&llama3_8b());
        // PEFT's count for r=16 all-linear on Llama-3-8B: 41,943,040.
        assert_eq!(a, 41_943_040);
        assert_eq!(e.part("frozen base"), 8_030_261_248 * 2);
        assert!(e.part("adapter") < 1_000_000_000);
        let states = e.total() - e.part("activations") - e.part("logits");
        assert!(states < 40_000_000_000, "{}", human(states));
        assert!(e.total() < 80_000_000_000, "{}", human(e.total()));
    }

    #[test]
    fn activations_grow_with_micro_batch_and_shrink_with_checkpointing() {
        let s = llama3_8b();
        for place in [Place::Cpu, Place::Gpu] {
            let one = train(&s, &paper(None, 1, false), place);
            let two = train(&s, &paper(None, 2, false), place);
            assert_eq!(two.part("activations"), 2 * one.part("activations"));
            assert!(two.total() > one.total());
            let ck = train(&s, &paper(None, 2, true), place);
            assert!(ck.part("activations") < two.part("activations") / 2);
        }
        // f32 on the CPU: sweetspot's kernels keep no scores and no whole logits.
        let mut f32_setup = paper(None, 1, false);
        f32_setup.dtype = Precision::F32;
        let cpu = train(&s, &f32_setup, Place::Cpu);
        let gpu = train(&s, &f32_setup, Place::Gpu);
        assert!(cpu.part("logits") * 10 < gpu.part("logits"));
        assert!(cpu.part("activations") < gpu.part("activations"));
    }

    #[test]
    fn generation_kv_cache_follows_batch_and_budget() {
        let s = llama3_8b();
        let g = InferSetup {
            dtype: Precision::Bf16,
            batch_size: 64,
            max_batch_tokens: None,
            prompt_tokens: 512,
            new_tokens: 2048,
            quantize: None,
        };
        let e = generate(&s, &g, Place::Gpu, false);
        // 2 (k, v) x 32 layers x 1024 wide x 2 bytes = 128 KiB per token.
        let per_token = 2 * 32 * 1024 * 2;
        let layer = 2 * 1024 * 2 * 64 * 2560;
        assert_eq!(e.part("KV cache"), per_token * 64 * 2560 + layer);
        let bounded = generate(
            &s,
            &InferSetup {
                max_batch_tokens: Some(32 * 2560),
                ..g
            },
            Place::Gpu,
            false,
        );
        assert!(bounded.part("KV cache") * 2 <= e.part("KV cache") + layer);
    }

    #[test]
    fn quantized_projections_are_counted_beside_the_weights() {
        let s = llama3_8b();
        let g = InferSetup {
            dtype: Precision::F32,
            batch_size: 4,
            max_batch_tokens: None,
            prompt_tokens: 128,
            new_tokens: 128,
            quantize: Some(sweetspot_core::Quantize::Q8_0),
        };
        let e = generate(&s, &g, Place::Cpu, false);
        // Llama-3-8B's projections: 32 layers x (4096 x 6144 + 4096 x 4096 + 3 x 4096 x 14336)
        // and the 128,256 x 4096 output projection, at 40 bytes per block of 32.
        let projections: u64 = 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336) + 128_256 * 4096;
        assert_eq!(e.part("q8_0 copies"), projections / 32 * 40);
        let plain = generate(
            &s,
            &InferSetup {
                quantize: None,
                ..g
            },
            Place::Cpu,
            false,
        );
        assert_eq!(plain.part("q8_0 copies"), 0);
        assert_eq!(e.total() - plain.total(), projections / 32 * 40);
    }

    #[test]
    fn config_json_gives_the_shape() {
        let text = r#"{"vocab_size": 320, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "tie_word_embeddings": false}"#;
        let s = Shape::from_config_json(text, Path::new("config.json")).unwrap();
        assert_eq!((s.head_dim, s.kv_dim()), (16, 32));
        let huge = text.replace(
            "\"vocab_size\": 320",
            "\"vocab_size\": 18446744073709551615",
        );
        let err = Shape::from_config_json(&huge, Path::new("config.json")).unwrap_err();
        assert!(err.contains("`vocab_size`"), "{err}");
        let bad = Shape::from_config_json("{}", Path::new("m/config.json")).unwrap_err();
        assert!(bad.contains("m/config.json") && bad.contains("num_attention_heads"));
        assert_eq!(
            meminfo("MemTotal:  100 kB\nMemAvailable: 42 kB\n", "MemAvailable"),
            Some(42)
        );
    }
}
