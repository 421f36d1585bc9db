//! The decoder on burn, one for every supported family: RMSNorm, RoPE (with Llama-3.1 scaling),
//! grouped-query attention, SwiGLU, tied or untied embeddings; batched with an attention mask and
//! a KV cache. What differs between families ([`crate::config::Family`]: q/k/v and output
//! biases, Qwen3's per-head q/k norms, whether `sliding_window` applies) is read from the config.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use std::sync::Arc;

use sweetspot_core::rows::cache_slots;

#[cfg(feature = "flex")]
pub(crate) use crate::kernels::Q8Weight;
/// Without the CPU backend there is no 8-bit path ([`Llama::quantize`] refuses).
#[cfg(not(feature = "flex"))]
#[derive(Debug)]
pub struct Q8Weight;

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::lora::{Adapters, LayerLora, project};
use crate::precision::{
    Precision, cast_module, cast_tracked, check_supported, precision_of, to_dtype, to_f32,
};

/// The value masked attention scores are set to: finite, so a row with every key masked (a pad
/// query) gives a uniform distribution instead of NaN.
const MASKED: f32 = -1.0e30;

/// Positions the RoPE tables cover when a model is made; they grow on demand (doubling) up to
/// the model's declared `max_position_embeddings`.
const INITIAL_ROPE_POSITIONS: usize = 4_096;

/// SwiGLU feed-forward.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>, lora: Option<&LayerLora>, q8: Option<&LayerQ8>) -> Tensor<3> {
        let ad = |name: &str| lora.and_then(|l| l.get(name));
        let q = |name: &str| q8.and_then(|l| l.get(name));
        let gate = project(&self.gate_proj, q("gate_proj"), ad("gate_proj"), x.clone());
        let up = project(&self.up_proj, q("up_proj"), ad("up_proj"), x);
        // Training in f32 on the CPU: the fused product, whose backward keeps gate and up only;
        // and 8-bit inference (its vectorized exponential rounds unlike burn's `silu`, which
        // f32 inference keeps so that its samples do not move).
        #[cfg(feature = "flex")]
        if (gate.device().is_autodiff() || q8.is_some())
            && crate::kernels::applies(&gate.device(), gate.dtype())
        {
            return project(
                &self.down_proj,
                q("down_proj"),
                ad("down_proj"),
                crate::kernels::swiglu(gate, up),
            );
        }
        // f32 inference on the CPU: burn's `silu(gate) * up` to the bit, in one pass on every
        // core.
        #[cfg(feature = "flex")]
        if let Some(h) = crate::kernels::swiglu_exact(&gate, &up) {
            return project(&self.down_proj, q("down_proj"), ad("down_proj"), h);
        }
        // bf16 inference on the CPU: one pass, rounded where torch's bf16 module rounds.
        #[cfg(feature = "flex")]
        if let Some(h) = crate::kernels::swiglu_bf16(&gate, &up) {
            return project(&self.down_proj, q("down_proj"), ad("down_proj"), h);
        }
        project(
            &self.down_proj,
            q("down_proj"),
            ad("down_proj"),
            silu(gate) * up,
        )
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    /// RMSNorm over each query head before RoPE (Qwen3).
    pub q_norm: Option<RmsNorm>,
    /// RMSNorm over each key head before RoPE (Qwen3).
    pub k_norm: Option<RmsNorm>,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Attention.
    pub self_attn: Attention,
    /// Feed-forward.
    pub mlp: Mlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the feed-forward.
    pub post_attention_layernorm: RmsNorm,
}

/// The decoder stack (Hugging Face's `LlamaModel`).
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embeddings.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
}

impl LlamaModel {
    /// A decoder with freshly initialized (random) weights on `device`.
    pub fn init(config: &LlamaConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        let hd = config.head_dim();
        let linear =
            |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm_of = |width: usize| {
            RmsNormConfig::new(width)
                .with_epsilon(config.rms_norm_eps)
                .init(device)
        };
        let norm = || norm_of(h);
        let family = config.family();
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                self_attn: Attention {
                    q_proj: linear(h, config.num_attention_heads * hd, family.qkv_bias),
                    k_proj: linear(h, config.kv_heads() * hd, family.qkv_bias),
                    v_proj: linear(h, config.kv_heads() * hd, family.qkv_bias),
                    o_proj: linear(config.num_attention_heads * hd, h, family.o_bias),
                    q_norm: family.qk_norm.then(|| norm_of(hd)),
                    k_norm: family.qk_norm.then(|| norm_of(hd)),
                    n_heads: config.num_attention_heads,
                    n_kv_heads: config.kv_heads(),
                    head_dim: hd,
                },
                mlp: Mlp {
                    gate_proj: linear(h, config.intermediate_size, config.mlp_bias),
                    up_proj: linear(h, config.intermediate_size, config.mlp_bias),
                    down_proj: linear(config.intermediate_size, h, config.mlp_bias),
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
            })
            .collect();
        Self {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, h).init(device),
            layers,
            norm: norm(),
        }
    }
}

/// The parameters of a causal LM, named as Hugging Face names them.
#[derive(Module, Debug)]
pub struct LlamaParams {
    /// The decoder.
    pub model: LlamaModel,
    /// The output projection; `None` when tied to the embeddings.
    pub lm_head: Option<Linear>,
    /// LoRA adapters on the decoder's linear layers (see [`crate::lora`]); `None` for a plain
    /// model, which then has exactly the parameters above.
    pub adapters: Option<Adapters>,
}

/// Per-layer keys and values of the tokens seen so far.
///
/// Each layer holds a `[batch, kv_heads, capacity, head_dim]` buffer of which the first
/// [`KvCache::len`] slots are filled: a decoding step writes its slots in place (burn-flex
/// assigns into a buffer nothing else holds without copying it) and attention reads the filled
/// slots as a view, so a step costs no copy of the cache. The filled slots are copied into new
/// buffers only when the rows change ([`KvCache::stack`], [`KvCache::retain_rows`]), when every
/// row is padded or trimmed in front, and when a buffer is full: [`KvCache::reserve`] makes
/// room ahead for what a batch can still write (the scheduler reserves a row's prompt plus
/// `max_new_tokens`, what the memory plan counts), else a step adds
/// [`KV_CACHE_ROOM`](sweetspot_core::rows::KV_CACHE_ROOM) slots at a time ([`cache_slots`]).
/// On the CPU the layers are copied on every core, into buffers the allocator hands over
/// zeroed ([`zero_buffer`]). Slots past `len` are zeros or stale and never read.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

/// Rows of a cache for [`KvCache::stack`]: rows `rows` of `cache`, their key slots from `skip`
/// on.
#[derive(Debug, Clone)]
pub struct CacheRows<'a> {
    /// The cache.
    pub cache: &'a KvCache,
    /// Its rows.
    pub rows: std::ops::Range<usize>,
    /// Leading key slots left out.
    pub skip: usize,
}

/// A zero-filled `[batch, kv_heads, slots, head_dim]` buffer. On burn-flex, a vector the
/// allocator hands over zeroed, which burn takes as it is: burn-flex's own `zeros` fills a byte
/// vector and then copies it into an aligned one, so every page of a new cache buffer was
/// written twice, once more than the copy into it (a page's first write costs about four later
/// ones on the machines measured: the kernel clears it first).
fn zero_buffer(shape: [usize; 4], dtype: burn::tensor::DType, device: &Device) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if *device == Device::flex() {
        use burn::tensor::DType;
        let n = shape.iter().product();
        let data = match dtype {
            DType::F32 => Some(TensorData::new(vec![0f32; n], shape)),
            DType::BF16 => Some(TensorData::new(vec![burn::tensor::bf16::ZERO; n], shape)),
            DType::F16 => Some(TensorData::new(vec![burn::tensor::f16::ZERO; n], shape)),
            _ => None,
        };
        if let Some(data) = data {
            return Tensor::from_data(data, (device, dtype));
        }
    }
    to_dtype(Tensor::<4>::zeros(shape, device), dtype)
}

/// Rows `rows` of the layer buffer `src`, their key slots `from..from + len`, written at slots
/// `at..at + len` of [`assemble`]'s buffer.
struct Block<'a> {
    src: &'a Tensor<4>,
    rows: std::ops::Range<usize>,
    from: usize,
    len: usize,
    at: usize,
}

/// A new buffer of `capacity` key slots holding `blocks` one after the other on the row axis
/// (their other slots zero), shaped and typed as `like` otherwise.
fn assemble(like: &Tensor<4>, blocks: &[Block<'_>], capacity: usize) -> Tensor<4> {
    let [_, h, _, d] = like.dims();
    let rows = blocks.iter().map(|b| b.rows.len()).sum();
    let mut out = zero_buffer([rows, h, capacity, d], like.dtype(), &like.device());
    let mut row = 0;
    for b in blocks {
        let n = b.rows.len();
        if n > 0 && b.len > 0 {
            out = out.slice_assign(
                [row..row + n, 0..h, b.at..b.at + b.len, 0..d],
                b.src
                    .clone()
                    .narrow(0, b.rows.start, n)
                    .narrow(2, b.from, b.len),
            );
        }
        row += n;
    }
    out
}

/// `x`'s first `len` slots (dimension 2) in a fresh buffer of `capacity` slots, `front` empty
/// slots before them.
fn rebuffer(x: &Tensor<4>, front: usize, len: usize, capacity: usize) -> Tensor<4> {
    let block = Block {
        src: x,
        rows: 0..x.dims()[0],
        from: 0,
        len,
        at: front,
    };
    assemble(x, &[block], capacity)
}

/// `f(layer)` for every layer of `depth`: on every core on the CPU, where copying a batch's
/// cache is most of the work between two decoding steps (and the cores are idle otherwise).
fn per_layer<T: Send>(
    depth: usize,
    device: &Device,
    f: impl Fn(usize) -> T + Send + Sync,
) -> Vec<T> {
    #[cfg(feature = "flex")]
    if *device == Device::flex() {
        use rayon::prelude::*;
        return (0..depth).into_par_iter().map(f).collect();
    }
    let _ = device;
    (0..depth).map(f).collect()
}

/// Ascending runs of consecutive values of `rows`, as ranges.
fn runs(rows: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for &r in rows {
        match out.last_mut() {
            Some(last) if last.end == r => last.end += 1,
            _ => out.push(r..r + 1),
        }
    }
    out
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions (key slots) cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Batch rows (0 for an empty cache).
    pub fn rows(&self) -> usize {
        self.first().map_or(0, |k| k.dims()[0])
    }

    /// Key slots every row's buffers hold, filled or not (0 for an empty cache).
    pub fn capacity(&self) -> usize {
        self.first().map_or(0, |k| k.dims()[2])
    }

    fn first(&self) -> Option<&Tensor<4>> {
        self.layers.iter().flatten().next().map(|(k, _)| k)
    }

    /// Every layer's buffers replaced by `f(buffer)`, the layers on every core on the CPU.
    fn rebuild(&mut self, f: impl Fn(Tensor<4>) -> Tensor<4> + Send + Sync) {
        let Some(device) = self.first().map(Tensor::device) else {
            return;
        };
        // Each buffer moved into `f`, not cloned: a clone would make every in-place write copy.
        let apply = |slot: &mut Option<(Tensor<4>, Tensor<4>)>| {
            *slot = slot.take().map(|(k, v)| (f(k), f(v)));
        };
        #[cfg(feature = "flex")]
        if device == Device::flex() {
            use rayon::prelude::*;
            self.layers.par_iter_mut().for_each(apply);
            return;
        }
        let _ = device;
        self.layers.iter_mut().for_each(apply);
    }

    /// Writes row `src_row` of `src` (all its slots) into row `row` of this cache, right-aligned:
    /// at slots `len - src.len() .. len`, in place (the row's earlier slots keep what they held,
    /// which the caller's key mask must mark as padding). Lets a new sequence take the row of
    /// one that ended without copying the batch.
    pub fn write_row(
        &mut self,
        row: usize,
        src: &KvCache,
        src_row: usize,
    ) -> Result<(), ModelError> {
        let (len, n) = (self.len, src.len);
        if n > len || src.layers.len() != self.layers.len() || row >= self.rows() {
            return Err(ModelError::Input(format!(
                "cannot write a cache row of {n} slots into row {row} of a cache of {} rows and \
                 {len} slots",
                self.rows()
            )));
        }
        for (dst, from) in self.layers.iter_mut().zip(&src.layers) {
            let (Some((k, v)), Some((sk, sv))) = (dst.take(), from) else {
                return Err(ModelError::Input("a cache layer is empty".into()));
            };
            let [_, h, _, d] = k.dims();
            let part = |x: &Tensor<4>| x.clone().narrow(0, src_row, 1).narrow(2, 0, n);
            let at = [row..row + 1, 0..h, len - n..len, 0..d];
            *dst = Some((
                k.slice_assign(at.clone(), part(sk)),
                v.slice_assign(at, part(sv)),
            ));
        }
        Ok(())
    }

    /// Keeps only the batch rows `rows`, in that order (for dropping finished sequences); the
    /// buffers keep their capacity. Ascending rows on the CPU move down in place
    /// ([`crate::kernels::keep_rows`]); otherwise they are copied. Panics if a row is out of
    /// range.
    pub fn retain_rows(&mut self, rows: &[usize]) {
        let (len, capacity) = (self.len, self.capacity());
        let runs = runs(rows);
        self.rebuild(|x| {
            #[cfg(feature = "flex")]
            let x = match crate::kernels::keep_rows(x, rows, len) {
                Ok(kept) => return kept,
                Err(x) => *x,
            };
            let x = &x;
            let blocks: Vec<Block<'_>> = runs
                .iter()
                .map(|r| Block {
                    src: x,
                    rows: r.clone(),
                    from: 0,
                    len,
                    at: 0,
                })
                .collect();
            assemble(x, &blocks, capacity)
        });
    }

    /// Puts `n` empty key slots before every row's (zeros: the caller's key mask must mark them
    /// as padding).
    pub fn pad_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let len = self.len;
        let capacity = cache_slots(len + n).max(self.capacity());
        self.rebuild(|x| rebuffer(&x, n, len, capacity));
        self.len += n;
    }

    /// Drops the first `n` key slots of every row (slots the key mask marks as padding in every
    /// row, or the rows' attention changes); the room after the filled slots stays as it was.
    pub fn trim_front(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        let keep = self.len - n;
        let capacity = cache_slots(keep + (self.capacity() - self.len));
        self.rebuild(|x| rebuffer(&x.narrow(2, n, keep), 0, keep, capacity));
        self.len = keep;
    }

    /// Keeps the first `len` slots (the later ones become stale, never read).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for `slots` key slots in every buffer (the filled slots copied into buffers
    /// of [`cache_slots`]`(slots)` if they hold fewer), so that the steps up to there write in
    /// place.
    pub fn reserve(&mut self, slots: usize) {
        if self.capacity() >= slots {
            return;
        }
        let (len, capacity) = (self.len, cache_slots(slots));
        self.rebuild(|x| rebuffer(&x, 0, len, capacity));
    }

    /// The rows of `parts`, in order, as one cache of `len` key slots and room for `capacity`
    /// (at least [`cache_slots`]`(len)`): each part's slots (after its `skip`) right-aligned at
    /// `len`, a shorter part's row padded in front with zeros that the caller's key mask must
    /// mark as padding.
    pub fn stack(
        parts: &[CacheRows<'_>],
        len: usize,
        capacity: usize,
    ) -> Result<KvCache, ModelError> {
        let Some(first) = parts.first() else {
            return Ok(KvCache::new());
        };
        let depth = first.cache.layers.len();
        for p in parts {
            let (n, rows) = (p.cache.len.saturating_sub(p.skip), p.cache.rows());
            if p.cache.layers.len() != depth
                || p.skip > p.cache.len
                || n > len
                || p.rows.start > p.rows.end
                || p.rows.end > rows
                || p.cache.layers.iter().any(Option::is_none)
            {
                return Err(ModelError::Input(format!(
                    "cannot put rows {:?} of a cache of {rows} rows and {} slots (from slot {}) \
                     into a cache of {len} slots and {depth} layers",
                    p.rows, p.cache.len, p.skip
                )));
            }
        }
        let Some(device) = first.cache.first().map(Tensor::device) else {
            return Ok(KvCache::new());
        };
        let capacity = capacity.max(cache_slots(len));
        let layers = per_layer(depth, &device, |l| {
            let layer = |pick: fn(&(Tensor<4>, Tensor<4>)) -> &Tensor<4>| {
                let blocks: Vec<Block<'_>> = parts
                    .iter()
                    .filter_map(|p| {
                        let src = pick(p.cache.layers[l].as_ref()?);
                        let n = p.cache.len - p.skip;
                        Some(Block {
                            src,
                            rows: p.rows.clone(),
                            from: p.skip,
                            len: n,
                            at: len - n,
                        })
                    })
                    .collect();
                assemble(blocks[0].src, &blocks, capacity)
            };
            Some((layer(|kv| &kv.0), layer(|kv| &kv.1)))
        });
        Ok(KvCache { layers, len })
    }
}

/// Writes a layer's new keys and values `[batch, kv_heads, tokens, head_dim]` into its cache
/// buffers after the `past` filled slots (a larger buffer first when they are full) and returns
/// views of the filled slots. The views share the buffers: they must be dropped before the next
/// step writes, or that write copies the buffer (correct, only slower).
fn cache_append(
    slot: &mut Option<(Tensor<4>, Tensor<4>)>,
    k: Tensor<4>,
    v: Tensor<4>,
    past: usize,
) -> (Tensor<4>, Tensor<4>) {
    let [b, kvh, t, hd] = k.dims();
    let end = past + t;
    let (kb, vb) = match slot.take() {
        Some((kb, vb)) if kb.dims()[2] >= end => (kb, vb),
        Some((kb, vb)) => {
            let capacity = cache_slots(end);
            (
                rebuffer(&kb, 0, past, capacity),
                rebuffer(&vb, 0, past, capacity),
            )
        }
        None => {
            let capacity = cache_slots(end);
            (rebuffer(&k, 0, 0, capacity), rebuffer(&v, 0, 0, capacity))
        }
    };
    let kb = kb.slice_assign([0..b, 0..kvh, past..end, 0..hd], k);
    let vb = vb.slice_assign([0..b, 0..kvh, past..end, 0..hd], v);
    let views = (kb.clone().narrow(2, 0, end), vb.clone().narrow(2, 0, end));
    *slot = Some((kb, vb));
    views
}

/// A Llama-family causal language model with its RoPE tables.
#[derive(Debug)]
pub struct Llama {
    /// The parameters ([`Llama::params`], [`Llama::params_mut`]): private, so no change of them
    /// can leave the 8-bit copies standing for other weights.
    pub(crate) params: LlamaParams,
    /// The configuration.
    pub config: LlamaConfig,
    rope: Rope,
    device: Device,
    /// 8-bit copies of the projections ([`Llama::quantize`]); dropped whenever the parameters
    /// change.
    q8: Option<Arc<ModelQ8>>,
}

/// The projections of every decoder layer and the output projection in Q8_0 (only made with the
/// CPU backend).
#[derive(Debug)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
struct ModelQ8 {
    layers: Vec<LayerQ8>,
    /// `None` for a reward model's backbone.
    head: Option<Q8Weight>,
}

/// A decoder layer's projections in Q8_0, by module name.
#[derive(Debug)]
pub(crate) struct LayerQ8(Vec<(&'static str, Q8Weight)>);

impl LayerQ8 {
    fn get(&self, name: &str) -> Option<&Q8Weight> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, w)| w)
    }
}

/// Weight quantization for inference ([`Llama::quantize`]).
pub use sweetspot_core::Quantize;

impl Llama {
    /// A model with freshly initialized (random) weights on `device`.
    pub fn init(config: &LlamaConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        let params = LlamaParams {
            model: LlamaModel::init(config, device),
            lm_head: (!config.tie_word_embeddings).then(|| {
                LinearConfig::new(h, config.vocab_size)
                    .with_bias(false)
                    .init(device)
            }),
            adapters: None,
        };
        Self::from_params(config, params, device)
    }

    /// A model from parameters built or loaded elsewhere (a reward model's backbone, say).
    pub fn from_params(config: &LlamaConfig, params: LlamaParams, device: &Device) -> Self {
        Self {
            params,
            config: config.clone(),
            rope: Rope::new(config, device),
            device: device.clone(),
            q8: None,
        }
    }

    /// The model with its weights cast to `precision` (an error where the device cannot compute
    /// in it). Activations follow the weights; see [`crate::precision`] for what stays in f32.
    pub fn to_precision(self, precision: Precision) -> Result<Self, ModelError> {
        check_supported(&self.device, precision)?;
        Ok(self.map_params(|p| cast_module(p, precision)))
    }

    /// A copy whose weights are `precision` casts of this model's and stay on the autodiff
    /// graph: a backward pass through the copy's forward reaches this model's parameters.
    /// Mixed-precision training keeps f32 master weights and computes through such a copy.
    pub fn compute_copy(&self, precision: Precision) -> Result<Self, ModelError> {
        check_supported(&self.device, precision)?;
        Ok(Self {
            params: cast_tracked(self.params.clone(), precision),
            config: self.config.clone(),
            rope: self.rope.share(),
            device: self.device.clone(),
            q8: None,
        })
    }

    /// The model with every projection (each decoder layer's seven and the output projection)
    /// also held in `quantize` and computed with it ([`crate::kernels::q8`]; activations are
    /// quantized per row as each product starts): inference on the CPU, weights in f32. The f32
    /// weights stay (the embedding lookup reads them); LoRA adapters add to the 8-bit products
    /// as they add to f32 ones. Refused, naming the reason, on another device, with autodiff, in
    /// another float type, or where a projection's input width is not a multiple of 32.
    pub fn quantize(self, quantize: Quantize) -> Result<Self, ModelError> {
        self.quantize_parts(quantize, true)
    }

    /// [`Llama::quantize`], the output projection too when `head` (a reward model's backbone
    /// never computes logits: its embeddings are not copied).
    pub(crate) fn quantize_parts(self, quantize: Quantize, head: bool) -> Result<Self, ModelError> {
        #[cfg(feature = "flex")]
        {
            let Quantize::Q8_0 = quantize;
            if self.device != Device::flex() || self.device.is_autodiff() {
                return Err(ModelError::Device(format!(
                    "quantize = \"{quantize}\" runs on the CPU for inference only; the device \
                     is {:?}",
                    self.device
                )));
            }
            if self.precision() != Precision::F32 {
                return Err(ModelError::Device(format!(
                    "quantize = \"{quantize}\" takes f32 weights (dtype = \"f32\"), not {}",
                    self.precision()
                )));
            }
            use crate::kernels::q8::{BLOCK, Layout, Q8Matrix};
            // A weight stored [in, out] (a `Linear`) or [out, in] (the tied embeddings).
            let weight =
                |name: &str, w: Tensor<2>, layout: Layout| -> Result<Q8Weight, ModelError> {
                    let [k, n] = match layout {
                        Layout::KN => w.dims(),
                        Layout::NK => {
                            let [n, k] = w.dims();
                            [k, n]
                        }
                    };
                    if !k.is_multiple_of(BLOCK) {
                        return Err(ModelError::Input(format!(
                            "quantize = \"{quantize}\": {name} takes {k} inputs, not a multiple of \
                         {BLOCK}"
                        )));
                    }
                    let w = crate::export::host_f32(w)?;
                    Ok(Q8Weight(Arc::new(Q8Matrix::quantize(&w, k, n, layout))))
                };
            let mut layers = Vec::with_capacity(self.params.model.layers.len());
            for (i, layer) in self.params.model.layers.iter().enumerate() {
                let (a, m) = (&layer.self_attn, &layer.mlp);
                let mut named = Vec::with_capacity(7);
                for (name, lin) in [
                    ("q_proj", &a.q_proj),
                    ("k_proj", &a.k_proj),
                    ("v_proj", &a.v_proj),
                    ("o_proj", &a.o_proj),
                    ("gate_proj", &m.gate_proj),
                    ("up_proj", &m.up_proj),
                    ("down_proj", &m.down_proj),
                ] {
                    let w = weight(&format!("layer {i} {name}"), lin.weight.val(), Layout::KN)?;
                    named.push((name, w));
                }
                layers.push(LayerQ8(named));
            }
            let head = match &self.params.lm_head {
                _ if !head => None,
                Some(lin) => Some(weight("lm_head", lin.weight.val(), Layout::KN)?),
                None => Some(weight(
                    "the output projection (tied to the embeddings)",
                    self.params.model.embed_tokens.weight.val(),
                    Layout::NK,
                )?),
            };
            Ok(Self {
                q8: Some(Arc::new(ModelQ8 { layers, head })),
                ..self
            })
        }
        #[cfg(not(feature = "flex"))]
        {
            let _ = head;
            Err(ModelError::Device(format!(
                "quantize = \"{quantize}\" needs the CPU backend (cargo feature `flex`)"
            )))
        }
    }

    /// The quantization the projections are computed in, if any ([`Llama::quantize`]).
    pub fn quantization(&self) -> Option<Quantize> {
        self.q8.as_ref().map(|_| Quantize::Q8_0)
    }

    /// Bytes the 8-bit copies of the projections take (0 without [`Llama::quantize`]).
    pub fn quantized_bytes(&self) -> u64 {
        #[cfg(feature = "flex")]
        if let Some(q) = &self.q8 {
            let layers: usize = q
                .layers
                .iter()
                .flat_map(|l| l.0.iter().map(|(_, w)| w.0.bytes()))
                .sum();
            return (layers + q.head.as_ref().map_or(0, |h| h.0.bytes())) as u64;
        }
        0
    }

    /// The float type the weights are held in.
    pub fn precision(&self) -> Precision {
        precision_of(self.params.model.embed_tokens.weight.val().dtype()).unwrap_or_default()
    }

    /// The longest sequence the model takes: its declared `max_position_embeddings` (the RoPE
    /// tables are built up to it as positions are reached).
    pub fn max_positions(&self) -> usize {
        self.rope.limit
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of key/value cache one token takes: every layer's keys and values, in f32 on the
    /// CPU (burn-flex: attention reads an f32 cache) and in the weights' type elsewhere
    /// ([`Precision::kv_cache_type`]).
    pub fn kv_bytes_per_token(&self) -> u64 {
        #[cfg(feature = "flex")]
        let on_cpu = *self.device() == Device::flex();
        #[cfg(not(feature = "flex"))]
        let on_cpu = false;
        let c = &self.config;
        (2 * c.num_hidden_layers * c.kv_heads() * c.head_dim()) as u64
            * self.precision().kv_cache_type(on_cpu).bytes()
    }

    /// Bytes the weights take.
    pub fn weight_bytes(&self) -> u64 {
        self.params.num_params() as u64 * self.precision().bytes()
    }

    /// Hidden states after the final norm, `[batch, tokens, hidden]`.
    ///
    /// - `tokens`: `[batch, tokens]` ids of the new tokens.
    /// - `positions`: `[batch, tokens]` RoPE positions (for left padding, count real tokens only).
    /// - `key_mask`: `[batch, cached + tokens]`, true where a key slot is a real token.
    /// - `cache`: keys/values of earlier slots; extended with the new ones.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        key_mask: Tensor<2, Bool>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let past = match cache {
            Some(c) => Past::Cache(c),
            None => Past::None,
        };
        self.forward_past(tokens, positions, key_mask, past, Outputs::All)
    }

    /// The hidden states of `rows` only (indices into the `[batch * tokens]` positions, row
    /// major), `[rows.len(), hidden]`: [`Llama::forward_hidden`]'s rows, the same bits. Where
    /// `rows` is one position per row, in row order, each its row's last real key (every later
    /// slot masked; with a sliding window, every row's last slot), the last layer computes its
    /// queries, attention, output projection and feed-forward for those positions only (its
    /// keys and values for all); otherwise the whole pass runs and `rows` are taken from it.
    pub fn forward_hidden_rows(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        key_mask: Tensor<2, Bool>,
        cache: Option<&mut KvCache>,
        rows: &[usize],
    ) -> Result<Tensor<2>, ModelError> {
        let past = match cache {
            Some(c) => Past::Cache(c),
            None => Past::None,
        };
        let h = self.forward_past(tokens, positions, key_mask, past, Outputs::Rows(rows))?;
        let [n, _, width] = h.dims();
        Ok(h.reshape([n, width]))
    }

    /// Extends `cache` with the keys and values of `tokens` (as [`Llama::forward_hidden`] does)
    /// and returns nothing: the last layer computes its keys and values only.
    pub fn fill_cache(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        key_mask: Tensor<2, Bool>,
        cache: &mut KvCache,
    ) -> Result<(), ModelError> {
        self.forward_past(
            tokens,
            positions,
            key_mask,
            Past::Cache(cache),
            Outputs::CacheOnly,
        )?;
        Ok(())
    }

    /// [`Llama::forward_hidden_rows`] after the slots of `prefix`, a one-row cache whose keys
    /// and values come before every row's tokens (a prompt shared by the batch, computed once):
    /// they are put under each row layer by layer, and `prefix` is not extended. `key_mask`
    /// covers the prefix's slots and the tokens.
    pub fn forward_hidden_after(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        key_mask: Tensor<2, Bool>,
        prefix: &KvCache,
        rows: &[usize],
    ) -> Result<Tensor<2>, ModelError> {
        if prefix.rows() != 1 || prefix.layers.len() != self.params.model.layers.len() {
            return Err(ModelError::Input(format!(
                "a shared prefix is one row of every layer; this one has {} rows and {} layers",
                prefix.rows(),
                prefix.layers.len()
            )));
        }
        let h = self.forward_past(
            tokens,
            positions,
            key_mask,
            Past::Prefix(prefix),
            Outputs::Rows(rows),
        )?;
        let [n, _, width] = h.dims();
        Ok(h.reshape([n, width]))
    }

    fn forward_past(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        key_mask: Tensor<2, Bool>,
        cache: Past<'_>,
        outputs: Outputs<'_>,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, t] = tokens.dims();
        let past = match &cache {
            Past::None => 0,
            Past::Cache(c) => c.len,
            Past::Prefix(c) => c.len,
        };
        let [mb, ms] = key_mask.dims();
        if mb != b || ms != past + t {
            return Err(ModelError::Input(format!(
                "key mask is [{mb}, {ms}], expected [{b}, {}]",
                past + t
            )));
        }
        let (cos, sin) = {
            let flat: Tensor<1, Int> = positions.reshape([b * t]);
            let hd = self.config.head_dim();
            let max_seen = flat.clone().max().into_scalar::<i64>().max(0) as usize;
            let (cos, sin) = self.rope.tables(&self.config, &self.device, max_seen + 1)?;
            (
                cos.select(0, flat.clone()).reshape([b, 1, t, hd]),
                sin.select(0, flat).reshape([b, 1, t, hd]),
            )
        };
        // allowed[b, q, s] = key is real && s <= past + q (&& past + q - s < window). Slots and
        // positions differ only by a row's left padding, which comes before all its real
        // tokens, so a distance in slots is the distance in positions (transformers' sliding
        // mask is on cache positions too).
        let window = self.config.window().unwrap_or(usize::MAX);
        if let Outputs::Rows(rows) = outputs
            && let Some(&r) = rows.iter().find(|&&r| r >= b * t)
        {
            return Err(ModelError::Input(format!(
                "position {r} asked of a pass of {b} rows of {t} tokens"
            )));
        }
        let picks = match outputs {
            Outputs::Rows(rows) if !self.params.model.layers.is_empty() => {
                picks(rows, &key_mask, b, t, past, window).then_some(rows)
            }
            _ => None,
        };
        let mut x = self.params.model.embed_tokens.forward(tokens);
        let kernel = own_kernel_mask(&self.device, x.dtype(), &key_mask, past, window);
        let masked = || {
            let causal: Vec<bool> = (0..t)
                .flat_map(|q| (0..past + t).map(move |s| s <= past + q && past + q - s < window))
                .collect();
            let causal =
                Tensor::<2, Bool>::from_data(TensorData::new(causal, [t, past + t]), &self.device);
            let allowed = causal
                .unsqueeze::<3>()
                .expand([b, t, past + t])
                .bool_and(key_mask.unsqueeze_dim::<3>(1).expand([b, t, past + t]));
            allowed.bool_not().unsqueeze_dim::<4>(1)
        };
        let path = match kernel {
            #[cfg(feature = "flex")]
            Some(mask) => AttnPath::Own(mask),
            #[cfg(not(feature = "flex"))]
            Some(never) => match never {},
            None if is_flex(&self.device) => AttnPath::Fused(masked()),
            None => AttnPath::Explicit(masked()),
        };

        let (cos, sin) = (to_dtype(cos, x.dtype()), to_dtype(sin, x.dtype()));
        let mut cache = cache;
        if let Past::Cache(c) = &mut cache
            && c.layers.len() != self.params.model.layers.len()
        {
            c.layers = vec![None; self.params.model.layers.len()];
        }
        let n_layers = self.params.model.layers.len();
        let width = x.dims()[2];
        // The picked positions as rows of `[batch * tokens, ..]`, and the path of their queries.
        let picked = picks.map(|rows| {
            let idx = row_index(rows, &self.device);
            let path = match &path {
                #[cfg(feature = "flex")]
                AttnPath::Own(mask) => AttnPath::Own(crate::kernels::AttnMask {
                    past: past + t - 1,
                    picked: true,
                    ..mask.clone()
                }),
                AttnPath::Fused(m) => AttnPath::Fused(m.clone().narrow(2, t - 1, 1)),
                AttnPath::Explicit(m) => AttnPath::Explicit(m.clone().narrow(2, t - 1, 1)),
            };
            (idx, path)
        });
        for (i, layer) in self.params.model.layers.iter().enumerate() {
            let slot = match &mut cache {
                Past::None => LayerPast::None,
                Past::Cache(c) => LayerPast::Append(&mut c.layers[i]),
                Past::Prefix(c) => match &c.layers[i] {
                    Some(kv) => LayerPast::Prefix(kv, c.len),
                    None => return Err(ModelError::Input(format!("prefix layer {i} is empty"))),
                },
            };
            let lora = self.params.adapters.as_ref().and_then(|a| a.layers.get(i));
            let q8 = self.q8.as_ref().map(|q| &q.layers[i]);
            let h = rms_norm(&layer.input_layernorm, x.clone());
            let last = i + 1 == n_layers;
            if last && matches!(outputs, Outputs::CacheOnly) {
                // Only the keys and values: nothing reads this layer's output.
                let (k, v) = keys_values(&layer.self_attn, lora, q8, h, &cos, &sin, &path);
                with_past(slot, k, v, past, b);
                break;
            }
            if last && let Some((idx, path)) = &picked {
                // Queries, attention, output projection and feed-forward of the picked
                // positions only, each computed as in the whole pass (the same bits).
                let take4 = |x: &Tensor<4>| {
                    let d = x.dims()[3];
                    x.clone()
                        .reshape([b * t, d])
                        .select(0, idx.clone())
                        .reshape([b, 1, 1, d])
                };
                let take = |x: Tensor<3>| {
                    x.reshape([b * t, width])
                        .select(0, idx.clone())
                        .reshape([b, 1, width])
                };
                let queries = Picked {
                    x: take(h.clone()),
                    cos: take4(&cos),
                    sin: take4(&sin),
                };
                let a = attention(
                    &layer.self_attn,
                    lora,
                    q8,
                    h,
                    Some(&queries),
                    &cos,
                    &sin,
                    slot,
                    past,
                    path,
                );
                x = take(x) + a;
                let h = rms_norm(&layer.post_attention_layernorm, x.clone());
                x = x + two_rows(h, |h| layer.mlp.forward(h, lora, q8));
                break;
            }
            let h = attention(
                &layer.self_attn,
                lora,
                q8,
                h,
                None,
                &cos,
                &sin,
                slot,
                past,
                &path,
            );
            x = x + h;
            let h = rms_norm(&layer.post_attention_layernorm, x.clone());
            x = x + layer.mlp.forward(h, lora, q8);
        }
        if let Past::Cache(c) = cache {
            c.len += t;
        }
        let x = match outputs {
            Outputs::CacheOnly => return Ok(x),
            Outputs::Rows(rows) if picked.is_none() => {
                // The whole pass ran: its rows (a row's norm does not depend on the others).
                x.reshape([b * t, width])
                    .select(0, row_index(rows, &self.device))
                    .reshape([rows.len(), 1, width])
            }
            _ => x,
        };
        Ok(rms_norm(&self.params.model.norm, x))
    }

    /// Logits `[batch, tokens, vocab]` from hidden states, in f32 whatever the weights' type.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        #[cfg(feature = "flex")]
        if let Some(head) = self.q8.as_ref().and_then(|q| q.head.as_ref())
            && let Some(logits) = crate::kernels::matmul_q8(&hidden, head)
        {
            return logits;
        }
        let logits = match &self.params.lm_head {
            Some(head) => crate::lora::linear_forward(head, None, hidden),
            None => {
                let w = self.params.model.embed_tokens.weight.val();
                // bf16 inference on AVX512-BF16: h [B, T, H] times W [V, H] as stored.
                #[cfg(feature = "flex")]
                if let Some(logits) =
                    crate::kernels::matmul_bf16(&hidden, &w, crate::kernels::bf16::Layout::NK)
                {
                    return to_f32(logits);
                }
                // W [V, H] times h^T [H, B*T]: the embedding matrix is used as stored (no
                // transposed copy of it), only the small activations and logits are transposed.
                let [b, t, h] = hidden.dims();
                let v = w.dims()[0];
                let rows = hidden.reshape([b * t, h]);
                // f32 inference on the CPU: the same product, W read where it lies, the logits
                // written in their own layout (no transposed copy).
                #[cfg(feature = "flex")]
                let product = crate::kernels::matmul_nt_f32(&w, &rows);
                #[cfg(not(feature = "flex"))]
                let product = None;
                product
                    .unwrap_or_else(|| w.matmul(rows.transpose()).transpose())
                    .reshape([b, t, v])
            }
        };
        to_f32(logits)
    }

    /// The output projection as `[vocab, hidden]` (the embeddings when tied; the head's weight
    /// transposed otherwise), on the autodiff graph like the parameter itself; `None` where the
    /// head has a bias (no family here has one).
    pub fn vocab_weight(&self) -> Option<Tensor<2>> {
        match &self.params.lm_head {
            None => Some(self.params.model.embed_tokens.weight.val()),
            Some(head) if head.bias.is_none() => Some(head.weight.val().transpose()),
            Some(_) => None,
        }
    }

    /// Logits for every position: [`Llama::forward_hidden`] then [`Llama::logits`].
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        key_mask: Tensor<2, Bool>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let hidden = self.forward_hidden(tokens, positions, key_mask, cache)?;
        Ok(self.logits(hidden))
    }

    /// The parameters.
    pub fn params(&self) -> &LlamaParams {
        &self.params
    }

    /// The parameters, taken out of the model.
    pub fn into_params(self) -> LlamaParams {
        self.params
    }

    /// The parameters, to change in place; the 8-bit copies ([`Llama::quantize`]), if any, are
    /// dropped first (they would stand for the old weights).
    pub fn params_mut(&mut self) -> &mut LlamaParams {
        self.q8 = None;
        &mut self.params
    }

    /// Replaces the parameters (after loading weights).
    pub fn with_params(mut self, params: LlamaParams) -> Self {
        self.params = params;
        self.q8 = None;
        self
    }

    /// The model with its parameters passed through `f` (an optimizer step), without a second
    /// reference to the old ones alive meanwhile.
    pub fn map_params(self, f: impl FnOnce(LlamaParams) -> LlamaParams) -> Self {
        let Llama {
            params,
            config,
            rope,
            device,
            q8: _,
        } = self;
        Llama {
            params: f(params),
            config,
            rope,
            device,
            q8: None,
        }
    }
}

/// Whether `device` is burn-flex's CPU device without autodiff: where burn-flex's fused attention
/// serves the float types sweetspot's own kernel does not take (bf16, f16; its backward does not
/// handle grouped-query heads, so training in those types takes the explicit path), and where
/// scoring runs two batches at once.
pub(crate) fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        !device.is_autodiff() && *device == Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

impl Llama {
    /// Whether inference computes attention with sweetspot's kernel, whose query tiles are
    /// aligned to key slots: then a query's result does not depend on whether the slots before
    /// it come from a [`KvCache`] or from the same call, and a prompt prefix shared by several
    /// sequences can be computed once (scoring does; the invariant is in `kernels`).
    pub fn cached_prefix_is_exact(&self) -> bool {
        #[cfg(feature = "flex")]
        {
            !self.device.is_autodiff()
                && own_kernel_applies(
                    &self.device,
                    self.params.model.embed_tokens.weight.val().dtype(),
                )
        }
        #[cfg(not(feature = "flex"))]
        {
            false
        }
    }
}

/// The key slots before a forward pass's tokens.
enum Past<'a> {
    None,
    /// A cache the pass extends.
    Cache(&'a mut KvCache),
    /// A one-row cache put under every row, not extended.
    Prefix(&'a KvCache),
}

/// What a forward pass returns.
#[derive(Clone, Copy)]
enum Outputs<'a> {
    /// Every position's hidden state, `[batch, tokens, hidden]`.
    All,
    /// These positions' (indices into `[batch * tokens]`), `[rows, 1, hidden]`.
    Rows(&'a [usize]),
    /// Nothing: the pass extends its cache, and the last layer computes only its keys and
    /// values.
    CacheOnly,
}

/// Whether a pass's last layer may compute the positions `rows` alone (indices into `[batch *
/// tokens]`): where `rows` is one position per row, in row order, each its row's last real key,
/// and more than one token per row (with one, every position is read).
/// Each picked query then sees the keys it sees in the whole pass; the attention kernel puts
/// it at the call's last slot (`past + tokens - 1`), which is its own slot or is followed only
/// by masked keys in its row. A sliding window counts back from the query's slot, so with one
/// every row's position must be its last slot.
fn picks(
    rows: &[usize],
    key_mask: &Tensor<2, Bool>,
    b: usize,
    t: usize,
    past: usize,
    window: usize,
) -> bool {
    if t < 2 || rows.len() != b || rows.iter().enumerate().any(|(r, &i)| i / t != r) {
        return false;
    }
    if window != usize::MAX && rows.iter().any(|&i| i % t != t - 1) {
        return false;
    }
    let keys = past + t;
    let Ok(mask) = key_mask.clone().into_data().try_to_vec::<bool>() else {
        return false;
    };
    mask.len() == b * keys
        && rows.iter().enumerate().all(|(r, &i)| {
            let slot = past + i % t;
            !mask[r * keys + slot + 1..(r + 1) * keys].contains(&true)
        })
}

/// `rows` as an index tensor on `device`.
fn row_index(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_data(TensorData::new(idx, [rows.len()]), device)
}

/// `f` of `x` `[rows, 1, width]` with at least two rows (a lone row goes with a copy of
/// itself): the gemm crate's one-row product rounds differently from the product of several
/// rows that a picked position's row is part of in the whole pass.
fn two_rows(x: Tensor<3>, f: impl FnOnce(Tensor<3>) -> Tensor<3>) -> Tensor<3> {
    if x.dims()[0] * x.dims()[1] > 1 {
        return f(x);
    }
    f(Tensor::cat(vec![x.clone(), x], 0)).narrow(0, 0, 1)
}

/// The queries a layer computes when it computes only some positions ([`picks`]): their
/// inputs `[batch, 1, hidden]` and RoPE tables `[batch, 1, 1, head_dim]`.
struct Picked {
    x: Tensor<3>,
    cos: Tensor<4>,
    sin: Tensor<4>,
}

/// One layer's [`Past`].
enum LayerPast<'a> {
    None,
    Append(&'a mut Option<(Tensor<4>, Tensor<4>)>),
    /// One row's keys and values and how many of their slots are filled.
    Prefix(&'a (Tensor<4>, Tensor<4>), usize),
}

/// How a forward pass computes attention.
enum AttnPath {
    /// sweetspot's kernel ([`crate::kernels::attention`]): f32 on burn-flex, with or without
    /// autodiff.
    #[cfg(feature = "flex")]
    Own(crate::kernels::AttnMask),
    /// burn-flex's fused attention (other float types on flex, inference), with the
    /// `[batch, 1, queries, keys]` mask (true: masked).
    Fused(Tensor<4, Bool>),
    /// Masked softmax composed of tensor operations (every other backend), with that mask.
    Explicit(Tensor<4, Bool>),
}

/// Whether a forward pass in `dtype` on `device` computes attention with sweetspot's kernel:
/// f32 on burn-flex (inference and training), and inference in bf16 or f16 there (its queries,
/// keys and values go to the kernel in f32; the cache holds f32; see `attention`).
#[cfg(feature = "flex")]
fn own_kernel_applies(device: &Device, dtype: burn::tensor::DType) -> bool {
    let inference_half = !device.is_autodiff()
        && matches!(dtype, burn::tensor::DType::BF16 | burn::tensor::DType::F16);
    crate::kernels::applies(device, burn::tensor::DType::F32)
        && (dtype == burn::tensor::DType::F32 || inference_half)
}

/// The key mask for sweetspot's attention kernel where it applies ([`own_kernel_applies`]).
#[cfg(feature = "flex")]
fn own_kernel_mask(
    device: &Device,
    dtype: burn::tensor::DType,
    key_mask: &Tensor<2, Bool>,
    past: usize,
    window: usize,
) -> Option<crate::kernels::AttnMask> {
    if !own_kernel_applies(device, dtype) {
        return None;
    }
    let mask = key_mask.clone().into_data().try_to_vec::<bool>().ok()?;
    Some(crate::kernels::AttnMask {
        key_mask: std::sync::Arc::new(mask),
        past,
        window,
        picked: false,
    })
}

#[cfg(not(feature = "flex"))]
fn own_kernel_mask(
    _: &Device,
    _: burn::tensor::DType,
    _: &Tensor<2, Bool>,
    _: usize,
    _: usize,
) -> Option<std::convert::Infallible> {
    None
}

/// `norm` of `x` over its last axis: f32 inference on the CPU in one pass that gives the same
/// bits ([`crate::kernels::rms_norm_exact`]), burn's `RmsNorm` otherwise.
fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let Some(y) = crate::kernels::rms_norm_exact(&x, norm) {
        return y;
    }
    norm.forward(x)
}

/// RoPE of `x` `[batch, tokens, heads, dim]` (as projected), `[batch, heads, tokens, dim]` out:
/// `x' * cos + rotate_half(x') * sin` of `x' = x.swap_dims(1, 2)`; f32 inference on the CPU in
/// one pass that gives the same bits.
fn rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(out) = crate::kernels::rope_exact(&x, cos, sin) {
        return out;
    }
    let x = x.swap_dims(1, 2);
    x.clone() * cos.clone() + rotate_half(x) * sin.clone()
}

fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.narrow(3, d / 2, d / 2);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

/// A layer's keys and values of `x` `[batch, tokens, hidden]` (projected, Qwen3's key norm,
/// RoPE), `[batch, kv_heads, tokens, head_dim]`; in f32 for sweetspot's kernel (a bf16 or f16
/// model's keys and values are cached in f32, converted once, as they are made).
fn keys_values(
    attn: &Attention,
    lora: Option<&LayerLora>,
    q8: Option<&LayerQ8>,
    x: Tensor<3>,
    cos: &Tensor<4>,
    sin: &Tensor<4>,
    path: &AttnPath,
) -> (Tensor<4>, Tensor<4>) {
    let [b, t, _] = x.dims();
    let (kvh, hd) = (attn.n_kv_heads, attn.head_dim);
    let ad = |name: &str| lora.and_then(|l| l.get(name));
    let w8 = |name: &str| q8.and_then(|l| l.get(name));
    let k = project(&attn.k_proj, w8("k_proj"), ad("k_proj"), x.clone()).reshape([b, t, kvh, hd]);
    // Qwen3: each head's keys normalized over the head's width, before RoPE.
    let k = match &attn.k_norm {
        Some(n) => rms_norm(n, k),
        None => k,
    };
    let v = project(&attn.v_proj, w8("v_proj"), ad("v_proj"), x)
        .reshape([b, t, kvh, hd])
        .swap_dims(1, 2);
    let k = rope(k, cos, sin);
    match path {
        #[cfg(feature = "flex")]
        AttnPath::Own(_) => (to_f32(k), to_f32(v)),
        _ => (k, v),
    }
}

/// A layer's keys and values of the earlier slots, then `k` and `v`'s (`b` rows): appended to
/// the cache, or a shared prefix's under every row.
fn with_past(
    cache: LayerPast<'_>,
    k: Tensor<4>,
    v: Tensor<4>,
    past: usize,
    b: usize,
) -> (Tensor<4>, Tensor<4>) {
    match cache {
        LayerPast::Append(slot) => cache_append(slot, k, v, past),
        LayerPast::Prefix((pk, pv), len) => {
            // The prefix's slots under every row, then the new ones, in one buffer per layer
            // (dropped with the layer).
            let under = |p: &Tensor<4>, x: Tensor<4>| {
                let [_, h, _, d] = p.dims();
                let p = p
                    .clone()
                    .narrow(0, 0, 1)
                    .narrow(2, 0, len)
                    .expand([b, h, len, d]);
                Tensor::cat(vec![p, x], 2)
            };
            (under(pk, k), under(pv, v))
        }
        LayerPast::None => (k, v),
    }
}

/// A layer's attention over `x` `[batch, tokens, hidden]` with its output projection:
/// `[batch, tokens, hidden]`, or with `picked` the picked positions' only, `[batch, 1,
/// hidden]` (the keys and values are every token's either way).
#[allow(clippy::too_many_arguments)]
fn attention(
    attn: &Attention,
    lora: Option<&LayerLora>,
    q8: Option<&LayerQ8>,
    x: Tensor<3>,
    picked: Option<&Picked>,
    cos: &Tensor<4>,
    sin: &Tensor<4>,
    cache: LayerPast<'_>,
    past: usize,
    path: &AttnPath,
) -> Tensor<3> {
    let b = x.dims()[0];
    let (h, kvh, hd) = (attn.n_heads, attn.n_kv_heads, attn.head_dim);
    let ad = |name: &str| lora.and_then(|l| l.get(name));
    let w8 = |name: &str| q8.and_then(|l| l.get(name));
    let (k, v) = keys_values(attn, lora, q8, x.clone(), cos, sin, path);
    let (k, v) = with_past(cache, k, v, past, b);
    let (xq, cos, sin) = match picked {
        Some(p) => (p.x.clone(), &p.cos, &p.sin),
        None => (x, cos, sin),
    };
    let t = xq.dims()[1];
    // A picked position's products with a copy of itself where it is alone (see `two_rows`).
    let proj = |lin: &Linear, name: &str, x: Tensor<3>| {
        if picked.is_some() {
            two_rows(x, |x| project(lin, w8(name), ad(name), x))
        } else {
            project(lin, w8(name), ad(name), x)
        }
    };
    let o_proj = |x: Tensor<3>| proj(&attn.o_proj, "o_proj", x);
    let q = proj(&attn.q_proj, "q_proj", xq).reshape([b, t, h, hd]);
    // Qwen3: each head's queries normalized over the head's width, before RoPE.
    let q = match &attn.q_norm {
        Some(n) => rms_norm(n, q),
        None => q,
    };
    let q = rope(q, cos, sin);
    // sweetspot's kernel computes in f32: a bf16 or f16 model's queries converted per step, its
    // output back.
    let dtype = q.dtype();
    #[cfg(feature = "flex")]
    let q = match path {
        AttnPath::Own(_) => to_f32(q),
        _ => q,
    };
    let masked = match path {
        #[cfg(feature = "flex")]
        AttnPath::Own(mask) => {
            // sweetspot's kernel: only the keys each query tile can see, no score tensor kept.
            let out = to_dtype(crate::kernels::attention(q, k, v, mask.clone()), dtype);
            return o_proj(out.swap_dims(1, 2).reshape([b, t, h * hd]));
        }
        AttnPath::Fused(masked) => {
            // burn-flex's fused attention: tiled over keys with an online softmax, grouped-query
            // heads without repeats, no [t, s] score tensor per head in memory. Rows whose keys
            // are all masked (pad queries) come out as zeros; real rows never read them.
            let out = burn::tensor::module::attention(
                q,
                k,
                v,
                Some(masked.clone()),
                None,
                burn::tensor::ops::AttentionModuleOptions::default(),
            );
            return o_proj(out.swap_dims(1, 2).reshape([b, t, h * hd]));
        }
        AttnPath::Explicit(masked) => masked,
    };
    let s = k.dims()[2];
    let rep = h / kvh;
    // Query heads h*rep .. h*rep+rep share key/value head h: fold them into the query axis rather
    // than repeating keys and values.
    let q = q.reshape([b, kvh, rep * t, hd]);
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(scale)
        .reshape([b, h, t, s]);
    // Masking and softmax in f32 (as transformers' eager attention), the product in the weights'
    // type.
    let scores = to_f32(scores).mask_fill(masked.clone().expand([b, h, t, s]), MASKED);
    let probs = softmax(scores, 3).reshape([b, kvh, rep * t, s]);
    let probs = to_dtype(probs, dtype);
    let out = probs.matmul(v).reshape([b, h, t, hd]);
    let out = out.swap_dims(1, 2).reshape([b, t, h * hd]);
    o_proj(out)
}

/// The RoPE cos and sin tables of a model: built for the first [`INITIAL_ROPE_POSITIONS`]
/// positions, grown (doubling) when a longer sequence comes, never past the declared
/// `max_position_embeddings`, where a position is refused by name. A row's values do not depend
/// on the table's length, so growing changes no result.
#[derive(Debug)]
struct Rope {
    tables: std::sync::RwLock<(Tensor<2>, Tensor<2>)>,
    limit: usize,
}

impl Rope {
    fn new(config: &LlamaConfig, device: &Device) -> Self {
        let limit = config.max_position_embeddings.max(1);
        Self {
            tables: std::sync::RwLock::new(rope_tables(
                config,
                device,
                limit.min(INITIAL_ROPE_POSITIONS),
            )),
            limit,
        }
    }

    /// Another handle on the same values (for a compute copy of the model).
    fn share(&self) -> Self {
        let t = self
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Self {
            tables: std::sync::RwLock::new(t),
            limit: self.limit,
        }
    }

    /// Tables covering at least `needed` positions.
    fn tables(
        &self,
        config: &LlamaConfig,
        device: &Device,
        needed: usize,
    ) -> Result<(Tensor<2>, Tensor<2>), ModelError> {
        if needed > self.limit {
            return Err(ModelError::Input(format!(
                "position {} is beyond the model's context: max_position_embeddings = {} \
                 (config.json, or the GGUF's context_length)",
                needed - 1,
                self.limit
            )));
        }
        {
            let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
            if t.0.dims()[0] >= needed {
                return Ok(t.clone());
            }
        }
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let have = t.0.dims()[0];
        if have < needed {
            let n = needed
                .max(have.saturating_mul(2))
                .next_power_of_two()
                .min(self.limit);
            *t = rope_tables(config, device, n);
        }
        Ok(t.clone())
    }
}

/// cos and sin tables `[n, head_dim]` for positions `0..n`, as transformers builds them: f32
/// inverse frequencies times f32 positions, both halves the same, times the attention factor.
/// Dynamic NTK scaling only changes frequencies past `max_position_embeddings`, which the model
/// refuses, so it is the default RoPE on every position sweetspot runs.
fn rope_tables(config: &LlamaConfig, device: &Device, n: usize) -> (Tensor<2>, Tensor<2>) {
    let inv = config.inv_freq();
    // YaRN's attention factor multiplies cos and sin (1 for every other type).
    let scale = config.attention_scaling() as f32;
    let hd = config.head_dim();
    let n = n.max(1);
    let mut cos = Vec::with_capacity(n * hd);
    let mut sin = Vec::with_capacity(n * hd);
    for p in 0..n {
        let row: Vec<f32> = inv.iter().map(|f| p as f32 * f).collect();
        for _ in 0..2 {
            cos.extend(row.iter().map(|a| (*a as f64).cos() as f32 * scale));
            sin.extend(row.iter().map(|a| (*a as f64).sin() as f32 * scale));
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [n, hd]), device),
        Tensor::from_data(TensorData::new(sin, [n, hd]), device),
    )
}

#[cfg(test)]
mod rope_tests {
    use super::*;

    fn config(max: usize) -> LlamaConfig {
        LlamaConfig::from_json(
            &format!(
                r#"{{"vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
                    "num_hidden_layers": 1, "num_attention_heads": 2,
                    "max_position_embeddings": {max}}}"#
            ),
            std::path::Path::new("config.json"),
        )
        .unwrap()
    }

    /// Llama 3.1 declares 131,072 positions and Qwen3 40,960: the tables reach them (no cap at
    /// 32,768), built only as far as a sequence needs, with the same values as a table built
    /// whole; one position past the declared context is refused by name.
    #[test]
    fn tables_grow_to_the_declared_context() {
        let device = Device::default();
        let cfg = config(131_072);
        let rope = Rope::new(&cfg, &device);
        assert_eq!(rope.limit, 131_072);
        let (small, _) = rope.tables(&cfg, &device, 10).unwrap();
        assert_eq!(small.dims()[0], INITIAL_ROPE_POSITIONS);
        let (big, big_sin) = rope.tables(&cfg, &device, 40_000).unwrap();
        assert_eq!(big.dims()[0], 65_536);
        let (whole, whole_sin) = rope_tables(&cfg, &device, 40_000);
        let rows = |t: &Tensor<2>, r: std::ops::Range<usize>| {
            t.clone()
                .slice([r])
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(rows(&big, 39_990..40_000), rows(&whole, 39_990..40_000));
        assert_eq!(
            rows(&big_sin, 39_990..40_000),
            rows(&whole_sin, 39_990..40_000)
        );
        assert_eq!(rows(&small, 4_000..4_096), rows(&big, 4_000..4_096));
        let (full, _) = rope.tables(&cfg, &device, 131_072).unwrap();
        assert_eq!(full.dims()[0], 131_072);
        let e = rope.tables(&cfg, &device, 131_073).unwrap_err().to_string();
        assert!(
            e.contains("position 131072") && e.contains("max_position_embeddings = 131072"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn model() -> Llama {
        let config = LlamaConfig::from_json(
            r#"{"vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 512}"#,
            std::path::Path::new("config.json"),
        )
        .unwrap();
        Llama::init(&config, &Device::default())
    }

    fn ints(v: Vec<i64>, shape: [usize; 2]) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(v, shape), &Device::default())
    }

    fn mask(v: Vec<bool>, shape: [usize; 2]) -> Tensor<2, Bool> {
        Tensor::from_data(TensorData::new(v, shape), &Device::default())
    }

    fn row(logits: &Tensor<3>, b: usize, t: usize) -> Vec<f32> {
        logits
            .clone()
            .slice([b..b + 1, t..t + 1])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "{what}: logits differ by {d}");
    }

    /// Decoding one token at a time through the cache, past several growths of its buffer
    /// (150 slots, room for 64 at a time), and through the operations the scheduler applies
    /// between steps (empty slots put in front and trimmed again, rows dropped in place and by
    /// copy, rows joined, room reserved ahead), gives the logits of one forward pass over the
    /// whole sequence.
    #[test]
    fn cached_decoding_matches_a_full_forward_pass() {
        let m = model();
        let (rows, len, prompt) = (2, 150, 10);
        let ids: Vec<i64> = (0..rows * len)
            .map(|i| ((i * 7 + i / 3) % 32) as i64)
            .collect();
        let pos: Vec<i64> = (0..rows).flat_map(|_| 0..len as i64).collect();
        let full = m
            .forward(
                ints(ids.clone(), [rows, len]),
                ints(pos, [rows, len]),
                mask(vec![true; rows * len], [rows, len]),
                None,
            )
            .unwrap();

        let mut cache = KvCache::new();
        let mut key_mask: Vec<Vec<bool>> = vec![vec![true; prompt]; rows];
        let take = |t0: usize, n: usize, live: &[usize]| {
            let v: Vec<i64> = live
                .iter()
                .flat_map(|&r| ids[r * len + t0..r * len + t0 + n].to_vec())
                .collect();
            let p: Vec<i64> = live
                .iter()
                .flat_map(|_| (t0 as i64..(t0 + n) as i64).collect::<Vec<_>>())
                .collect();
            (ints(v, [live.len(), n]), ints(p, [live.len(), n]))
        };
        let flat = |km: &[Vec<bool>]| mask(km.concat(), [km.len(), km[0].len()]);
        let mut live = vec![0, 1];
        let (tok, p) = take(0, prompt, &live);
        let out = m
            .forward(tok, p, flat(&key_mask), Some(&mut cache))
            .unwrap();
        for (i, &r) in live.iter().enumerate() {
            close(
                &row(&out, i, prompt - 1),
                &row(&full, r, prompt - 1),
                "prefill",
            );
        }
        for t in prompt..len {
            match t {
                40 => {
                    cache.pad_front(3);
                    key_mask
                        .iter_mut()
                        .for_each(|k| drop(k.splice(0..0, [false; 3])));
                }
                60 => {
                    cache.trim_front(3);
                    key_mask.iter_mut().for_each(|k| {
                        k.drain(..3);
                    });
                }
                90 => {
                    // Row 0 joins again beside itself, then the first copy is dropped (rows
                    // that ascend: moved in place on the CPU).
                    let both = CacheRows {
                        cache: &cache,
                        rows: 0..2,
                        skip: 0,
                    };
                    let n = cache.len();
                    cache = KvCache::stack(&[both.clone(), both], n, 0).unwrap();
                    key_mask = [key_mask.clone(), key_mask.clone()].concat();
                    live = [live.clone(), live.clone()].concat();
                    cache.retain_rows(&[1, 2]);
                    key_mask = vec![key_mask[1].clone(), key_mask[2].clone()];
                    live = vec![live[1], live[2]];
                }
                100 => {
                    // The rows swapped (not ascending: copied), and room made ahead.
                    cache.retain_rows(&[1, 0]);
                    key_mask.swap(0, 1);
                    live.swap(0, 1);
                    cache.reserve(len + 20);
                    assert!(cache.capacity() >= len + 20);
                }
                120 => {
                    // Each row stacked on its own, padded in front by two slots.
                    let n = cache.len();
                    let one = |r: usize| CacheRows {
                        cache: &cache,
                        rows: r..r + 1,
                        skip: 0,
                    };
                    cache = KvCache::stack(&[one(0), one(1)], n + 2, 0).unwrap();
                    key_mask
                        .iter_mut()
                        .for_each(|k| drop(k.splice(0..0, [false; 2])));
                }
                _ => {}
            }
            key_mask.iter_mut().for_each(|k| k.push(true));
            let (tok, p) = take(t, 1, &live);
            let out = m
                .forward(tok, p, flat(&key_mask), Some(&mut cache))
                .unwrap();
            for (i, &r) in live.iter().enumerate() {
                close(
                    &row(&out, i, 0),
                    &row(&full, r, t),
                    &format!("slot {t}, row {r}"),
                );
            }
        }
        assert_eq!(cache.len(), len + 2); // the two slots put in front at 120
    }
}

#[cfg(test)]
mod pick_tests {
    use super::*;

    #[test]
    fn the_last_layer_computes_alone_only_rows_read_at_their_last_key() {
        let device = Device::default();
        // Two rows of 4 slots after 1 cached one: row 0 has 3 real tokens (right padding), row 1
        // has 4.
        let mask = Tensor::<2, Bool>::from_data(
            TensorData::new(
                vec![true, true, true, true, false, true, true, true, true, true],
                [2, 5],
            ),
            &device,
        );
        let picks =
            |rows: &[usize], t: usize, window: usize| super::picks(rows, &mask, 2, t, 1, window);
        assert!(picks(&[2, 7], 4, usize::MAX));
        // Row 0 read before a real key; out of row order; one row only; one token per row.
        assert!(!picks(&[1, 7], 4, usize::MAX));
        assert!(!picks(&[7, 2], 4, usize::MAX));
        assert!(!picks(&[2], 4, usize::MAX));
        assert!(!picks(&[0, 1], 1, usize::MAX));
        // A window counts from the call's last slot: every row must be read there.
        assert!(!picks(&[2, 7], 4, 8));
        assert!(picks(&[3, 7], 4, 8));
    }
}
