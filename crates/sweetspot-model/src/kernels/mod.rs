//! sweetspot's own CPU kernels on burn-flex, as burn backend-extension operations with their own
//! backward passes (burn's autodiff would otherwise keep every intermediate of the composed
//! operations):
//!
//! - [`attention`]: masked, causal (optionally windowed) grouped-query attention, tiled over
//!   queries so a tile computes only the keys its queries can see; softmax with a vectorized
//!   exponential; the backward recomputes the probabilities tile by tile from the saved
//!   log-sum-exp, so no `[batch, heads, queries, keys]` tensor outlives a tile.
//! - [`swiglu`]: `silu(gate) * up` whose backward keeps only `gate` and `up`.
//! - [`token_logprob`]: `log softmax(hidden · weight^T)[target]` per row, with the logits made
//!   a block of rows at a time in both passes, so the `[rows, vocab]` logits and softmax are
//!   never whole.
//!
//! - [`matmul_bf16`]: a bf16 product for inference (f32 sums rounded once to bf16) on
//!   AVX512-BF16 ([`bf16`]), where burn-flex converts both operands to f32 on every call; and
//!   [`swiglu_bf16`], the SwiGLU product of bf16 values for inference in one pass.
//!
//! - [`swiglu_exact`], [`rope_exact`] and [`rms_norm_exact`]: f32 inference's SwiGLU product,
//!   rotary embedding and RMSNorm in one pass on every core, bit for bit the composed burn-flex
//!   operations they replace (so f32 samples do not move); and [`matmul_f32`], f32 inference's
//!   linear products for a decode step's few rows, bit for bit burn-flex's (gemm's) product
//!   ([`f32mm`]); and [`matmul_nt_f32`], the tied vocabulary projection `(e · x^T)^T`, bit
//!   for bit burn-flex's, the embedding read where it lies, the logits in their own layout.
//!
//! The first three take f32 on burn-flex (with or without autodiff); [`applies`] says when. The
//! inference ones (bf16, the exact f32 ones, 8-bit) are for burn-flex without autodiff and say
//! themselves when they apply (`None`). Other devices and dtypes use the composed burn operations
//! (the parity tests pin both).

pub mod bf16;
mod cpu;
mod decode;
pub mod f32mm;
pub mod q8;

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Device, Tensor, TensorData};

pub(crate) use cpu::{AttnDims, QUERY_TILE};

/// Up to this many rows are one tile of an inference product ([`bf16`], [`q8`]): a decode
/// step's rows are, so each weight is read once per step.
const ROWS_PER_TILE: usize = 96;
/// Rows of a tile when there are more.
const ROWS_PER_LONG_TILE: usize = 48;
/// Below this many multiply-adds an inference product runs on the calling thread.
const PARALLEL_MACS: usize = 1 << 18;

/// Tiles a product wants for rayon's threads to share it evenly: several per thread.
fn tiles_wanted() -> usize {
    4 * rayon::current_num_threads()
}

/// Rows per tile of an `m`-row product with `col_tiles` column tiles: enough tiles for every
/// thread to get several (a decode step's narrow products have few column tiles), rows split in
/// whole register blocks of `block` rows until there are.
fn tile_rows(m: usize, col_tiles: usize, block: usize) -> usize {
    let want = tiles_wanted();
    let rows = if m <= ROWS_PER_TILE {
        m
    } else {
        ROWS_PER_LONG_TILE
    };
    if col_tiles * m.div_ceil(rows) < want {
        let split = want.div_ceil(col_tiles);
        m.div_ceil(split).div_ceil(block).max(1) * block
    } else {
        rows
    }
}

/// `tile(t)` for every tile `t`: on the calling thread for a small product (`macs`
/// multiply-adds) or a single tile, on rayon's threads otherwise.
fn run_tiles(tiles: usize, macs: usize, tile: impl Fn(usize) + Send + Sync) {
    use rayon::prelude::*;
    if macs < PARALLEL_MACS || tiles == 1 {
        (0..tiles).for_each(tile);
    } else {
        (0..tiles).into_par_iter().for_each(tile);
    }
}

/// Outputs of at least this many elements are zero-filled on every core ([`zeroed`]).
const PARALLEL_ZEROS: usize = 1 << 15;

/// `n` copies of `zero`: the fresh output of a kernel, which then writes it. A large one is
/// written in pieces on every core, so its first write (and the kernel's clearing of the fresh
/// pages under it) no longer runs on the calling thread alone while rayon's threads wait; a
/// small one as `vec!` makes it.
pub(crate) fn zeroed<T: Copy + Send + Sync>(n: usize, zero: T) -> Vec<T> {
    use rayon::prelude::*;
    if n < PARALLEL_ZEROS {
        return vec![zero; n];
    }
    let mut v: Vec<T> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(cpu::ELEMENTWISE_CHUNK)
        .for_each(|piece| {
            cpu::filled(piece, zero);
        });
    // SAFETY: the pieces cover the first `n` elements, each written by `filled`.
    unsafe { v.set_len(n) };
    v
}

/// The output of a product whose tiles write disjoint elements of it from several threads.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
// SAFETY: the tiles write disjoint elements through it.
unsafe impl<T> Sync for SyncPtr<T> {}
unsafe impl<T> Send for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// Whether the kernels apply to tensors of `dtype` on `device`: f32 on burn-flex.
pub fn applies(device: &Device, dtype: DType) -> bool {
    // A device compares equal by hardware alone (autodiff and checkpointing ignored), so this
    // holds for burn-flex with and without autodiff.
    dtype == DType::F32 && *device == Device::flex()
}

/// Masking of one attention call: `[batch, keys]` real-key flags, the cache length and the
/// sliding window.
#[derive(Debug, Clone)]
pub struct AttnMask {
    /// `[batch * keys]`, true where a key slot holds a real token.
    pub key_mask: Arc<Vec<bool>>,
    /// Key slots before the first query.
    pub past: usize,
    /// A query sees keys fewer than this many slots back (`usize::MAX`: all).
    pub window: usize,
    /// The call's one query per row was picked from a call of several queries (a forward
    /// pass's last layer computing only the positions it returns): it is computed as it is
    /// there, in a tile of products of at least two rows, not as a decode step's lone query.
    pub picked: bool,
}

/// A weight in Q8_0 for [`matmul_q8`] (shared, never copied).
#[derive(Debug, Clone)]
pub struct Q8Weight(pub Arc<q8::Q8Matrix>);

/// The rows a [`keep_rows`] call keeps: ascending, each below the row count.
#[derive(Debug, Clone)]
pub struct KeptRows(pub Arc<Vec<usize>>);

/// Row targets of a [`token_logprob`] call.
#[derive(Debug, Clone)]
pub struct Targets(pub Arc<Vec<u32>>);

/// The operations, implemented on burn-flex and on autodiff over it.
#[backend_extension(Flex, Autodiff)]
pub trait SweetspotKernels: Backend {
    /// See [`attention`].
    fn sweetspot_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttnMask,
    ) -> FloatTensor<Self>;

    /// See [`swiglu`].
    fn sweetspot_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// See [`swiglu_exact`].
    fn sweetspot_swiglu_exact(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// See [`rope_exact`].
    fn sweetspot_rope_exact(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// See [`rms_norm_exact`].
    fn sweetspot_rms_norm_exact(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// See [`token_logprob`].
    fn sweetspot_token_logprob(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: Targets,
    ) -> FloatTensor<Self>;

    /// See [`matmul_q8`].
    fn sweetspot_matmul_q8(x: FloatTensor<Self>, w: Q8Weight) -> FloatTensor<Self>;

    /// See [`matmul_bf16`].
    fn sweetspot_matmul_bf16(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        layout: bf16::Layout,
    ) -> FloatTensor<Self>;

    /// See [`matmul_f32`].
    fn sweetspot_matmul_f32(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// See [`matmul_nt_f32`].
    fn sweetspot_matmul_nt_f32(e: FloatTensor<Self>, x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// See [`keep_rows`].
    fn sweetspot_keep_rows(x: FloatTensor<Self>, rows: KeptRows, slots: usize)
    -> FloatTensor<Self>;
}

fn f32s(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "sweetspot kernels take f32");
    t.to_contiguous()
}

/// Keys or values `[batch, kv_heads, keys, dim]` as storage in which head block `i` (of
/// `batch * kv_heads`) is the `keys * dim` values from `i * stride`, and that stride: the
/// tensor as it is when it is the filled prefix of a cache buffer (a view narrowed on the key
/// axis, as [`crate::llama`]'s cache hands it over), a contiguous copy otherwise.
fn kv_blocks(t: &FlexTensor) -> (FlexTensor, usize) {
    assert_eq!(t.dtype(), DType::F32, "sweetspot kernels take f32");
    let layout = t.layout();
    let [_, heads, keys, dim] = dims4(t);
    let strides = layout.strides();
    let block = strides[1];
    let prefix = layout.start_offset() == 0
        && strides[3] == 1
        && strides[2] == dim as isize
        && block >= (keys * dim) as isize
        && strides[0] == block * heads as isize;
    if prefix {
        (t.clone(), block as usize)
    } else {
        (t.to_contiguous(), keys * dim)
    }
}

fn flex_tensor(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

fn attn_dims(q: &FlexTensor, k: &FlexTensor, mask: &AttnMask) -> AttnDims {
    let [batch, heads, queries, head_dim] = dims4(q);
    let [kb, kv_heads, keys, kd] = dims4(k);
    assert!(
        kb == batch && kd == head_dim && kv_heads > 0 && heads % kv_heads == 0,
        "attention: query {:?} and key {:?} do not fit",
        dims4(q),
        dims4(k)
    );
    assert_eq!(
        mask.key_mask.len(),
        batch * keys,
        "attention: key mask size"
    );
    assert!(
        mask.past + queries <= keys,
        "attention: more queries than keys"
    );
    AttnDims {
        batch,
        heads,
        kv_heads,
        queries,
        keys,
        head_dim,
        past: mask.past,
        window: mask.window,
        several: queries > 1 || mask.picked,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

/// Forward on flex tensors: the output and the log-sum-exp `[batch, heads, queries]`.
fn attention_flex(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: &AttnMask,
) -> (FlexTensor, FlexTensor) {
    let dims = attn_dims(q, k, mask);
    let q = f32s(q);
    let (k, k_block) = kv_blocks(k);
    let (v, v_block) = kv_blocks(v);
    let mut out = zeroed(q.storage::<f32>().len(), 0f32);
    let mut lse = vec![0f32; dims.batch * dims.heads * dims.queries];
    cpu::attention_forward(
        q.storage(),
        (k.storage(), k_block),
        (v.storage(), v_block),
        &mask.key_mask,
        &dims,
        &mut out,
        &mut lse,
    );
    (
        flex_tensor(
            out,
            vec![dims.batch, dims.heads, dims.queries, dims.head_dim],
        ),
        flex_tensor(lse, vec![dims.batch, dims.heads, dims.queries]),
    )
}

fn logprob_flex(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    targets: &Targets,
) -> (FlexTensor, Vec<f32>) {
    let (h, w) = (f32s(hidden), f32s(weight));
    let hs = h.layout().shape();
    let ws = w.layout().shape();
    let (rows, width, vocab) = (hs[0], hs[1], ws[0]);
    assert!(
        ws[1] == width && targets.0.len() == rows,
        "token_logprob: hidden [{rows}, {width}], weight [{vocab}, {}], {} targets",
        ws[1],
        targets.0.len()
    );
    assert!(
        targets.0.iter().all(|&t| (t as usize) < vocab),
        "token_logprob: a target is outside the vocabulary"
    );
    let (logp, lse) =
        cpu::token_logprob_forward(h.storage(), w.storage(), &targets.0, width, vocab);
    (flex_tensor(logp, vec![rows]), lse)
}

fn swiglu_flex(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let shape = gate.layout().shape().clone();
    assert_eq!(
        &shape,
        up.layout().shape(),
        "swiglu: gate and up differ in shape"
    );
    if gate.dtype() == DType::BF16 && up.dtype() == DType::BF16 {
        use burn::tensor::bf16 as B;
        let (g, u) = (gate.to_contiguous(), up.to_contiguous());
        let out = cpu::swiglu_bf16_forward(g.storage::<B>(), u.storage::<B>());
        return FlexTensor::from_data(TensorData::new(out, shape.to_vec()));
    }
    let (g, u) = (f32s(gate), f32s(up));
    let out = cpu::swiglu_forward(g.storage(), u.storage());
    flex_tensor(out, shape.to_vec())
}

fn rope_flex(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor) -> FlexTensor {
    let [b, t, h, d] = dims4(x);
    let table = [b, 1, t, d];
    assert!(
        dims4(cos) == table && dims4(sin) == table && d % 2 == 0,
        "rope: x {:?}, cos {:?}, sin {:?}",
        dims4(x),
        dims4(cos),
        dims4(sin)
    );
    let (x, cos, sin) = (f32s(x), f32s(cos), f32s(sin));
    let out = cpu::rope_exact_forward(x.storage(), cos.storage(), sin.storage(), [b, t, h, d]);
    flex_tensor(out, vec![b, h, t, d])
}

fn rms_norm_flex(x: &FlexTensor, gamma: &FlexTensor, eps: f32) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    let width = gamma.layout().shape().num_elements();
    assert!(
        shape.last() == Some(&width),
        "rms_norm: x {shape:?} and gamma of {width}"
    );
    let (x, gamma) = (f32s(x), f32s(gamma));
    let out = cpu::rms_norm_exact_forward(x.storage(), gamma.storage(), eps);
    flex_tensor(out, shape)
}

fn matmul_q8_flex(x: &FlexTensor, w: &Q8Weight) -> FlexTensor {
    let x = f32s(x);
    let shape = x.layout().shape().to_vec();
    let k = *shape.last().expect("matmul_q8: x has a last axis");
    let m = shape.iter().rev().skip(1).product::<usize>();
    assert_eq!(
        k,
        w.0.k(),
        "matmul_q8: x {shape:?} and a weight of {} inputs",
        w.0.k()
    );
    let n = w.0.n();
    let mut out = zeroed(m * n, 0f32);
    q8::matmul(x.storage(), &w.0, &mut out, m);
    let mut out_shape = shape;
    *out_shape.last_mut().expect("a last axis") = n;
    flex_tensor(out, out_shape)
}

fn matmul_bf16_flex(x: &FlexTensor, w: &FlexTensor, layout: bf16::Layout) -> FlexTensor {
    use burn::tensor::bf16 as B;
    assert!(
        x.dtype() == DType::BF16 && w.dtype() == DType::BF16,
        "matmul_bf16 takes bf16"
    );
    let (x, w) = (x.to_contiguous(), w.to_contiguous());
    let shape = x.layout().shape().to_vec();
    let ws = w.layout().shape();
    let k = *shape.last().expect("matmul_bf16: x has a last axis");
    let m = shape.iter().rev().skip(1).product::<usize>();
    let (wk, n) = match layout {
        bf16::Layout::KN => (ws[0], ws[1]),
        bf16::Layout::NK => (ws[1], ws[0]),
    };
    assert_eq!(wk, k, "matmul_bf16: x {shape:?} and w {ws:?} do not fit");
    let mut out = zeroed(m * n, B::ZERO);
    bf16::matmul(
        x.storage::<B>(),
        w.storage::<B>(),
        &mut out,
        m,
        k,
        n,
        layout,
    );
    let mut out_shape = shape;
    *out_shape.last_mut().expect("a last axis") = n;
    FlexTensor::from_data(TensorData::new(out, out_shape))
}

/// `(e [n, k] · x [m, k]^T)^T`, `[m, n]`, through [`f32mm::matmul_nt`] (the caller checks that
/// it applies).
fn matmul_nt_flex(e: &FlexTensor, x: &FlexTensor) -> FlexTensor {
    let (e, x) = (f32s(e), f32s(x));
    let (es, xs) = (e.layout().shape(), x.layout().shape());
    let (n, k, m) = (es[0], es[1], xs[0]);
    assert_eq!(xs[1], k, "matmul_nt_f32: x is not [m, {k}]");
    flex_tensor(
        f32mm::matmul_nt(e.storage(), x.storage(), m, k, n),
        vec![m, n],
    )
}

/// `x [.., k] · w [k, n]` through [`f32mm`] where it applies, through the gemm calls burn's
/// linear layer makes otherwise ([`f32mm::burn_linear`], into fresh memory), burn's linear
/// layer itself for a weight that is a view: the same bits every way (burn's linear layer runs a
/// decode step's rows, `[rows, 1, k]`, as one `[rows, k]` product, whose outputs do not depend
/// on the rows beside them).
fn matmul_f32_flex(x: FlexTensor, w: FlexTensor) -> FlexTensor {
    use burn::backend::ops::ModuleOps as _;
    let shape = x.layout().shape().to_vec();
    let ws = w.layout().shape();
    let k = *shape.last().expect("matmul_f32: x has a last axis");
    let m = shape.iter().rev().skip(1).product::<usize>();
    let n = ws[1];
    let fits = x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && shape.len() >= 2
        && ws[0] == k
        && w.layout().is_contiguous()
        && w.layout().start_offset() == 0;
    if !fits {
        return Flex::linear(x, w, None);
    }
    let x = x.to_contiguous();
    let out = if f32mm::applies(m, k, n) {
        let mut out = zeroed(m * n, 0f32);
        f32mm::matmul(x.storage(), w.storage(), &mut out, m, k, n);
        out
    } else {
        f32mm::burn_linear(x.storage(), &shape, w.storage(), n)
    };
    let mut out_shape = shape;
    *out_shape.last_mut().expect("a last axis") = n;
    flex_tensor(out, out_shape)
}

impl SweetspotKernels for Flex {
    fn sweetspot_matmul_f32(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul_f32_flex(x, w)
    }

    fn sweetspot_matmul_nt_f32(e: FloatTensor<Self>, x: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul_nt_flex(&e, &x)
    }

    fn sweetspot_keep_rows(
        x: FloatTensor<Self>,
        rows: KeptRows,
        slots: usize,
    ) -> FloatTensor<Self> {
        keep_rows_flex(x, &rows.0, slots)
    }

    fn sweetspot_matmul_q8(x: FloatTensor<Self>, w: Q8Weight) -> FloatTensor<Self> {
        matmul_q8_flex(&x, &w)
    }

    fn sweetspot_matmul_bf16(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        layout: bf16::Layout,
    ) -> FloatTensor<Self> {
        matmul_bf16_flex(&x, &w, layout)
    }

    fn sweetspot_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        swiglu_flex(&gate, &up)
    }

    fn sweetspot_swiglu_exact(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = gate.layout().shape().to_vec();
        assert_eq!(
            &shape[..],
            &up.layout().shape()[..],
            "swiglu: gate and up differ in shape"
        );
        let (g, u) = (f32s(&gate), f32s(&up));
        flex_tensor(cpu::swiglu_exact_forward(g.storage(), u.storage()), shape)
    }

    fn sweetspot_rope_exact(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        rope_flex(&x, &cos, &sin)
    }

    fn sweetspot_rms_norm_exact(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        rms_norm_flex(&x, &gamma, eps)
    }

    fn sweetspot_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttnMask,
    ) -> FloatTensor<Self> {
        attention_flex(&q, &k, &v, &mask).0
    }

    fn sweetspot_token_logprob(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: Targets,
    ) -> FloatTensor<Self> {
        logprob_flex(&hidden, &weight, &targets).0
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    // q, k, v, output, lse, mask
    type State = (
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        AttnMask,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (q, k, v, out, lse, mask) = ops.state;
        let dout = f32s(&grads.consume::<Flex>(&ops.node));
        let dims = attn_dims(&q, &k, &mask);
        let (dq, dk, dv) = cpu::attention_backward(
            q.storage(),
            k.storage(),
            v.storage(),
            out.storage(),
            lse.storage(),
            dout.storage(),
            &mask.key_mask,
            &dims,
        );
        let shapes = [dims4(&q), dims4(&k), dims4(&v)];
        for ((parent, grad), shape) in ops.parents.iter().zip([dq, dk, dv]).zip(shapes) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, flex_tensor(grad, shape.to_vec()));
            }
        }
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    // gate, up
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let grad = f32s(&grads.consume::<Flex>(&ops.node));
        let shape = gate.layout().shape().to_vec();
        let (dg, du) = cpu::swiglu_backward(gate.storage(), up.storage(), grad.storage());
        let [pg, pu] = &ops.parents;
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex_tensor(dg, shape.clone()));
        }
        if let Some(node) = pu {
            grads.register::<Flex>(node.id, flex_tensor(du, shape));
        }
    }
}

#[derive(Debug)]
struct LogprobBackward;

impl Backward<Flex, 2> for LogprobBackward {
    // hidden, weight, targets, lse
    type State = (FlexTensor, FlexTensor, Targets, Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (hidden, weight, targets, lse) = ops.state;
        let grad = f32s(&grads.consume::<Flex>(&ops.node));
        let hs = hidden.layout().shape();
        let (rows, width, vocab) = (hs[0], hs[1], weight.layout().shape()[0]);
        let (dh, dw) = cpu::token_logprob_backward(
            hidden.storage(),
            weight.storage(),
            &targets.0,
            &lse,
            grad.storage(),
            width,
            vocab,
        );
        let [ph, pw] = &ops.parents;
        if let Some(node) = ph {
            grads.register::<Flex>(node.id, flex_tensor(dh, vec![rows, width]));
        }
        if let Some(node) = pw {
            grads.register::<Flex>(node.id, flex_tensor(dw, vec![vocab, width]));
        }
    }
}

impl<C: CheckpointStrategy> SweetspotKernels for Autodiff<Flex, C> {
    /// No gradient flows through an 8-bit product (inference only: `Llama::quantize` refuses a
    /// model that trains, so this is never reached with a tracked input).
    fn sweetspot_matmul_q8(x: FloatTensor<Self>, w: Q8Weight) -> FloatTensor<Self> {
        use burn::backend::AutodiffBackend as _;
        let (x, _) = x.into_parts();
        Self::from_inner(matmul_q8_flex(&x, &w))
    }

    /// No gradient flows through it (inference only: [`rope_exact`] does not apply under
    /// autodiff, so this is never reached with a tracked input).
    fn sweetspot_rope_exact(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        use burn::backend::AutodiffBackend as _;
        let (x, _) = x.into_parts();
        let (cos, _) = cos.into_parts();
        let (sin, _) = sin.into_parts();
        Self::from_inner(rope_flex(&x, &cos, &sin))
    }

    /// Inference only ([`rms_norm_exact`] does not apply under autodiff): the forward of the
    /// inner tensors, untracked, as [`rope_exact`]'s.
    fn sweetspot_rms_norm_exact(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        use burn::backend::AutodiffBackend as _;
        let (x, _) = x.into_parts();
        let (gamma, _) = gamma.into_parts();
        Self::from_inner(rms_norm_flex(&x, &gamma, eps))
    }

    /// Not a kernel of its own under autodiff ([`swiglu_exact`] is for inference): burn's
    /// composed `silu(gate) * up`, with its backward.
    fn sweetspot_swiglu_exact(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn::backend::ops::{ActivationOps as _, FloatTensorOps as _};
        let act = Self::float_mul(gate.clone(), Self::sigmoid(gate));
        Self::float_mul(act, up)
    }

    /// Not a kernel of its own under autodiff ([`matmul_f32`] is for inference): burn's
    /// linear layer, with its backward.
    fn sweetspot_matmul_f32(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn::backend::ops::ModuleOps as _;
        Self::linear(x, w, None)
    }

    /// Not a kernel of its own under autodiff ([`matmul_nt_f32`] is for inference): burn's
    /// product with the transposed view, transposed, with its backward.
    fn sweetspot_matmul_nt_f32(e: FloatTensor<Self>, x: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn::backend::ops::FloatTensorOps as _;
        Self::float_swap_dims(Self::float_matmul(e, Self::float_swap_dims(x, 0, 1)), 0, 1)
    }

    /// Not in place under autodiff ([`keep_rows`] is for a cache): burn's `select` of the rows.
    fn sweetspot_keep_rows(
        x: FloatTensor<Self>,
        rows: KeptRows,
        _slots: usize,
    ) -> FloatTensor<Self> {
        select_rows::<Self>(x, &rows.0)
    }

    /// Not a kernel of its own under autodiff ([`matmul_bf16`] is for inference): burn's
    /// product, with its backward.
    fn sweetspot_matmul_bf16(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        layout: bf16::Layout,
    ) -> FloatTensor<Self> {
        use burn::backend::ops::FloatTensorOps as _;
        let w = match layout {
            bf16::Layout::KN => w,
            bf16::Layout::NK => Self::float_swap_dims(w, 0, 1),
        };
        Self::float_matmul(x, w)
    }

    fn sweetspot_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttnMask,
    ) -> FloatTensor<Self> {
        let (q, qn) = q.into_parts();
        let (k, kn) = k.into_parts();
        let (v, vn) = v.into_parts();
        let (q, k, v) = (f32s(&q), f32s(&k), f32s(&v));
        let (out, lse) = attention_flex(&q, &k, &v, &mask);
        match AttentionBackward
            .prepare::<C>([qn, kn, vn])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((q, k, v, out.clone(), lse, mask), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn sweetspot_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (g, gn) = gate.into_parts();
        let (u, un) = up.into_parts();
        let (g, u) = (f32s(&g), f32s(&u));
        let out = swiglu_flex(&g, &u);
        match SwigluBackward
            .prepare::<C>([gn, un])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((g, u), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn sweetspot_token_logprob(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: Targets,
    ) -> FloatTensor<Self> {
        let (h, hn) = hidden.into_parts();
        let (w, wn) = weight.into_parts();
        let (h, w) = (f32s(&h), f32s(&w));
        let (logp, lse) = logprob_flex(&h, &w, &targets);
        match LogprobBackward
            .prepare::<C>([hn, wn])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((h, w, targets, Arc::new(lse)), logp),
            OpsKind::UnTracked(prep) => prep.finish(logp),
        }
    }
}

/// Grouped-query attention: `q` `[batch, heads, queries, dim]`, `k` and `v` `[batch, kv_heads,
/// keys, dim]`; query `i` of row `b` (at slot `past + i`) sees key slot `s` when the key mask
/// marks it real, `s <= past + i` and `past + i - s < window`. Returns `[batch, heads, queries,
/// dim]`; a query that sees no key gets zeros. Only where [`applies`].
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: AttnMask) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask,
    ))
}

/// `silu(gate) * up`, elementwise (the SwiGLU feed-forward's product). Its backward keeps only
/// `gate` and `up` (the composed operations also keep `silu(gate)`). Only where [`applies`].
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// `silu(gate) * up` of f32 tensors for inference, every element computed exactly as burn's
/// composed `silu(gate) * up` computes it on burn-flex (the same logistic function through the
/// same `expf`, the same products in the same order: the same bits), in one pass on every core
/// instead of three passes on the calling thread, each allocating its output. `None` where it
/// does not apply: not f32 on burn-flex without autodiff.
pub fn swiglu_exact<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    inference_in(DType::F32, &gate.device(), &[gate.dtype(), up.dtype()]).then(|| {
        Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_swiglu_exact(
            gate.clone().into_dispatch(),
            up.clone().into_dispatch(),
        ))
    })
}

/// Rotary position embedding of f32 queries or keys for inference: `x` `[batch, tokens, heads,
/// dim]` as the projection makes it, `cos` and `sin` `[batch, 1, tokens, dim]`; returns `[batch,
/// heads, tokens, dim]`, each element exactly as the composed `x' * cos + rotate_half(x') * sin`
/// of `x' = x.swap_dims(1, 2)` computes it on burn-flex (the same two products, then their sum:
/// the same bits), in one pass on every core instead of six operations on the calling thread,
/// each allocating its output. `None` where it does not apply: not f32 on burn-flex without
/// autodiff.
pub fn rope_exact(x: &Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Option<Tensor<4>> {
    let operands = [x.dtype(), cos.dtype(), sin.dtype()];
    inference_in(DType::F32, &x.device(), &operands).then(|| {
        Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_rope_exact(
            x.clone().into_dispatch(),
            cos.clone().into_dispatch(),
            sin.clone().into_dispatch(),
        ))
    })
}

/// burn's `RmsNorm` of f32 values for inference (over the last axis, `norm.gamma` and
/// `norm.epsilon`), each element exactly as its composed operations compute it on burn-flex
/// (squares, burn-flex's row sum, the mean, `+ eps`, the square root, the division, then the
/// weight: the same bits), in one pass on every core instead of seven operations on the calling
/// thread, each allocating its output. `None` where it does not apply: not f32 on burn-flex
/// without autodiff.
pub fn rms_norm_exact<const D: usize>(
    x: &Tensor<D>,
    norm: &burn::nn::RmsNorm,
) -> Option<Tensor<D>> {
    let gamma = norm.gamma.val();
    let width = gamma.dims()[0];
    (width > 0
        && x.dims()[D - 1] == width
        && inference_in(DType::F32, &x.device(), &[x.dtype(), gamma.dtype()]))
    .then(|| {
        Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_rms_norm_exact(
            x.clone().into_dispatch(),
            gamma.into_dispatch(),
            norm.epsilon as f32,
        ))
    })
}

/// Whether an inference operation in `dtype` applies: every operand of that type, on burn-flex
/// without autodiff.
fn inference_in(dtype: DType, device: &Device, operands: &[DType]) -> bool {
    operands.iter().all(|&d| d == dtype) && !device.is_autodiff() && *device == Device::flex()
}

/// `silu(gate) * up` of bf16 tensors for inference, the activation rounded to bf16 and then the
/// product (two roundings, as transformers' bf16 `act_fn(gate_proj(x)) * up_proj(x)`), in one
/// pass on every core. `None` where it does not apply: not bf16 on burn-flex without autodiff.
pub fn swiglu_bf16<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    inference_in(DType::BF16, &gate.device(), &[gate.dtype(), up.dtype()]).then(|| {
        Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_swiglu(
            gate.clone().into_dispatch(),
            up.clone().into_dispatch(),
        ))
    })
}

/// `log softmax(hidden · weight^T)[row, targets[row]]` for `hidden` `[rows, width]` and `weight`
/// `[vocab, width]`, `[rows]`. Only where [`applies`].
pub fn token_logprob(hidden: Tensor<2>, weight: Tensor<2>, targets: Arc<Vec<u32>>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_token_logprob(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        Targets(targets),
    ))
}

/// `x [.., k] · w` in bf16 for inference: `w [k, n]` ([`bf16::Layout::KN`], a linear layer's
/// weight) or `w [n, k]` ([`bf16::Layout::NK`], tied embeddings), f32 sums rounded once to bf16;
/// on AVX512-BF16 where the CPU has it. `None` where it does not apply: not bf16 on burn-flex
/// without autodiff, or no AVX512-BF16 on this CPU.
pub fn matmul_bf16<const D: usize>(
    x: &Tensor<D>,
    w: &Tensor<2>,
    layout: bf16::Layout,
) -> Option<Tensor<D>> {
    let fits = inference_in(DType::BF16, &x.device(), &[x.dtype(), w.dtype()]) && bf16::available();
    fits.then(|| {
        Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_matmul_bf16(
            x.clone().into_dispatch(),
            w.clone().into_dispatch(),
            layout,
        ))
    })
}

/// Rows `rows` (ascending) of a `[batch, heads, slots, dim]` cache buffer, in place where
/// nothing else holds the buffer (else in a copy): each kept row's first `slots` key slots
/// moved down to its new row, the result a view of the buffer's first `rows.len()` rows (its
/// later slots stale). Dropping finished rows from a batch's cache so costs no allocation and
/// moves only the rows after the first dropped one. `Err(x)` where it does not apply: not f32,
/// bf16 or f16 on burn-flex without autodiff, or rows not ascending below the row count.
pub fn keep_rows(x: Tensor<4>, rows: &[usize], slots: usize) -> Result<Tensor<4>, Box<Tensor<4>>> {
    let [b, ..] = x.dims();
    let dtype = x.dtype();
    let fits = matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
        && inference_in(dtype, &x.device(), &[dtype])
        && rows.windows(2).all(|w| w[0] < w[1])
        && rows.last().is_none_or(|&r| r < b);
    if !fits {
        return Err(Box::new(x));
    }
    Ok(Tensor::from_dispatch(
        <Dispatch as SweetspotKernels>::sweetspot_keep_rows(
            x.into_dispatch(),
            KeptRows(Arc::new(rows.to_vec())),
            slots,
        ),
    ))
}

fn keep_rows_flex(x: FlexTensor, rows: &[usize], slots: usize) -> FlexTensor {
    let mut x = if x.layout().is_contiguous() && x.layout().start_offset() == 0 {
        x
    } else {
        x.to_contiguous()
    };
    let [_, h, cap, d] = dims4(&x);
    let shape = [h, cap, d, slots.min(cap)];
    // `storage_mut` copies the buffer first only if something else holds it.
    match x.dtype() {
        DType::F32 => cpu::keep_rows(x.storage_mut::<f32>(), rows, shape),
        DType::BF16 => cpu::keep_rows(x.storage_mut::<burn::tensor::bf16>(), rows, shape),
        DType::F16 => cpu::keep_rows(x.storage_mut::<burn::tensor::f16>(), rows, shape),
        // Not a cache's type (`keep_rows` sends none here): burn's copy of the rows.
        _ => return select_rows::<Flex>(x, rows),
    }
    x.narrow(0, 0, rows.len())
}

/// Rows `rows` of `x` (its first axis), in that order, in a new tensor: burn's `select`.
fn select_rows<B: Backend>(x: FloatTensor<B>, rows: &[usize]) -> FloatTensor<B> {
    use burn::backend::TensorMetadata as _;
    let device = x.device();
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let n = idx.len();
    B::float_select(x, 0, B::int_from_data(TensorData::new(idx, [n]), &device))
}

/// `x [.., k] · w [k, n]` in f32 for inference (a linear layer's weight as burn holds it), in
/// exactly burn-flex's arithmetic: faster for a decode step's few rows ([`f32mm`]), and for
/// more rows burn's own gemm calls without burn-flex's zero-filled and copied output
/// ([`f32mm::burn_linear`]). `None` where it does not apply: not f32 on burn-flex without
/// autodiff, or fewer than two axes (burn's product then).
pub fn matmul_f32<const D: usize>(x: &Tensor<D>, w: &Tensor<2>) -> Option<Tensor<D>> {
    let [k, _] = w.dims();
    let dims = x.dims();
    let fits = inference_in(DType::F32, &x.device(), &[x.dtype(), w.dtype()])
        && D >= 2
        && dims[D - 1] == k;
    fits.then(|| {
        Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_matmul_f32(
            x.clone().into_dispatch(),
            w.clone().into_dispatch(),
        ))
    })
}

/// `(e [n, k] · x [m, k]^T)^T` in f32 for inference (the tied vocabulary projection: `e` the
/// embedding matrix, `x` the hidden rows), `[m, n]` (the logits' layout, a row per hidden row),
/// in exactly burn-flex's arithmetic for `e.matmul(x.transpose())`, `e` read where it lies, the
/// output neither first zero-filled nor copied out of a transposed view
/// ([`f32mm::matmul_nt`]). `None` where it does not apply: not f32 on burn-flex without
/// autodiff, fewer than two rows, or a CPU without AVX-512 (burn's product then).
pub fn matmul_nt_f32(e: &Tensor<2>, x: &Tensor<2>) -> Option<Tensor<2>> {
    let ([n, k], [m, kx]) = (e.dims(), x.dims());
    let fits = inference_in(DType::F32, &x.device(), &[x.dtype(), e.dtype()])
        && k == kx
        && f32mm::applies_nt(m, k, n);
    fits.then(|| {
        Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_matmul_nt_f32(
            e.clone().into_dispatch(),
            x.clone().into_dispatch(),
        ))
    })
}

/// `x [.., k] · w` with `w` in Q8_0 and `x` quantized per row as the product starts
/// ([`q8`]): 8-bit inference on burn-flex, f32 in and out. `None` where it does not apply (not
/// f32 on burn-flex).
pub fn matmul_q8<const D: usize>(x: &Tensor<D>, w: &Q8Weight) -> Option<Tensor<D>> {
    applies(&x.device(), x.dtype()).then(|| {
        Tensor::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_matmul_q8(
            x.clone().into_dispatch(),
            w.clone(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_outputs_are_every_element_zero_at_every_size() {
        // Below, at and past the parallel threshold, and not a whole number of pieces.
        for n in [
            0,
            1,
            PARALLEL_ZEROS - 1,
            PARALLEL_ZEROS,
            PARALLEL_ZEROS + 7,
            5 * cpu::ELEMENTWISE_CHUNK + 3,
        ] {
            let v = zeroed(n, 0f32);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x.to_bits() == 0), "n = {n}");
            let b = zeroed(n, burn::tensor::bf16::ZERO);
            assert_eq!(b.len(), n);
            assert!(b.iter().all(|&x| x.to_bits() == 0), "bf16, n = {n}");
        }
    }

    /// A tensor of a type no cache has (f64) handed to the burn-flex operation directly gets
    /// its rows copied, not a panic; the cache types move in place to the same values.
    #[test]
    fn kept_rows_of_every_float_type() {
        let device = Device::flex();
        let shape = [3, 2, 4, 5];
        let n: usize = shape.iter().product();
        let values: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let want: Vec<f64> = [0usize, 2]
            .iter()
            .flat_map(|&r| values[r * 40..(r + 1) * 40].to_vec())
            .collect();
        let x = Tensor::<4>::from_data(
            TensorData::new(values.clone(), shape),
            (&device, DType::F64),
        );
        let kept = Tensor::<4>::from_dispatch(<Dispatch as SweetspotKernels>::sweetspot_keep_rows(
            x.into_dispatch(),
            KeptRows(Arc::new(vec![0, 2])),
            4,
        ));
        assert_eq!(kept.dims(), [2, 2, 4, 5]);
        assert_eq!(kept.into_data().try_to_vec::<f64>().unwrap(), want);
        let x = Tensor::<4>::from_data(
            TensorData::new(values.clone(), shape),
            (&device, DType::F64),
        );
        assert!(
            keep_rows(x, &[0, 2], 4).is_err(),
            "keep_rows takes cache types only"
        );
        let x = Tensor::<4>::from_data(TensorData::new(values, shape), &device);
        let kept = keep_rows(x, &[0, 2], 4).expect("f32 is a cache type");
        let got: Vec<f64> = kept
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        assert_eq!(got, want);
    }
}
