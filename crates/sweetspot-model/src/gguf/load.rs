//! Loading a GGUF file into a [`Llama`]: each tensor dequantized to f32 and put in its place,
//! with llama.cpp's layout undone.
//!
//! Invariants:
//! - llama.cpp permutes the rows of a Llama model's query and key projections (for its RoPE
//!   layout); loading undoes that permutation, so the weights match transformers' layout (Qwen's
//!   are stored as transformers holds them and are not touched).
//! - Every tensor of the file must find its place in the model: one the model has no use for
//!   is refused by name.
//! - Tensors are dequantized to f32 one at a time, each as it is put in place, and checked
//!   against the shape the configuration gives it; a tensor's decoding, un-permuting and
//!   transposing run on every core, each task writing its own part of the output (the weights
//!   are the same bits whatever the thread count).

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

use super::container::Gguf;
use crate::error::ModelError;
use crate::llama::Llama;

/// Undoes llama.cpp's row permutation of a q/k projection `[rows, cols]` with `heads` heads:
/// its rows were reordered from (head, half, i) to (head, i, half). The heads on every core.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0f32; w.len()];
    out.par_chunks_mut(per_head * cols)
        .zip(w.par_chunks(per_head * cols))
        .for_each(|(out, w)| {
            for i in 0..half {
                for p in 0..2 {
                    // GGUF row (h, i, p) holds HF row (h, p, i).
                    let (src, dst) = (i * 2 + p, p * half + i);
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        });
    out
}

/// `[rows, cols]` row-major to `[cols, rows]` row-major, in tiles; each task writes its own
/// band of output rows, the bands on every core.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const TILE: usize = 32;
    let mut out = vec![0f32; w.len()];
    if rows == 0 {
        return out;
    }
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let c0 = band * TILE;
            let width = out.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                for c in 0..width {
                    let src = &w[r0 * cols + c0 + c..];
                    let dst = &mut out[c * rows + r0..c * rows + (r0 + TILE).min(rows)];
                    for (i, o) in dst.iter_mut().enumerate() {
                        *o = src[i * cols];
                    }
                }
            }
        });
    out
}

fn matrix(data: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

impl Llama {
    /// Loads a GGUF model: configuration from its metadata, weights dequantized to f32 one tensor
    /// at a time; for `llama` the q/k rows are un-permuted back to transformers' layout (llama.cpp
    /// permutes them for Llama only; Qwen's are stored as transformers holds them). Every tensor
    /// of the file must find its place: one the model has no use for is refused by name.
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self, ModelError> {
        let cfg = gguf.llama_config()?;
        let family = cfg.family();
        let permute = cfg.model_type == "llama";
        let mut model = Llama::init(&cfg, device);
        let hd = cfg.head_dim();
        let h = cfg.hidden_size;
        let used = std::cell::RefCell::new(std::collections::BTreeSet::<String>::new());
        let take = |name: &str| -> Result<Vec<f32>, ModelError> {
            used.borrow_mut().insert(name.to_string());
            gguf.dequantize(name)
        };
        // [out, in] from the file, as a burn Linear weight [in, out].
        let linear = |name: &str, rows: usize, cols: usize, permute_heads: Option<usize>| {
            let info = gguf
                .tensors
                .get(name)
                .ok_or_else(|| gguf.err(format!("tensor `{name}` is missing")))?;
            if info.dims != [cols as u64, rows as u64] {
                return Err(gguf.err(format!(
                    "tensor `{name}` has dims {:?}, expected [{cols}, {rows}]",
                    info.dims
                )));
            }
            let mut w = take(name)?;
            if let Some(heads) = permute_heads {
                w = unpermute_rows(&w, rows, cols, heads);
            }
            // burn's Linear holds [in, out]: transpose on the host so the weight is contiguous
            // (a transposed view would be copied again on every forward).
            Ok::<_, ModelError>(Param::from_tensor(matrix(
                transpose(&w, rows, cols),
                cols,
                rows,
                device,
            )))
        };
        let vector = |name: &str, len: usize| {
            let w = take(name)?;
            if w.len() != len {
                return Err(gguf.err(format!(
                    "tensor `{name}` has {} elements, expected {len}",
                    w.len()
                )));
            }
            Ok::<_, ModelError>(Param::from_tensor(Tensor::from_data(
                TensorData::new(w, [len]),
                device,
            )))
        };
        let p = &mut model.params;
        let emb = take("token_embd.weight")?;
        if emb.len() != cfg.vocab_size * h {
            return Err(gguf.err("tensor `token_embd.weight` does not match the vocabulary".into()));
        }
        p.model.embed_tokens.weight = Param::from_tensor(matrix(emb, cfg.vocab_size, h, device));
        p.model.norm.gamma = vector("output_norm.weight", h)?;
        if let Some(head) = p.lm_head.as_mut() {
            head.weight = linear("output.weight", cfg.vocab_size, h, None)?;
        }
        if cfg.rope_freqs.is_some() {
            used.borrow_mut().insert("rope_freqs.weight".into());
        }
        let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
        let heads = |n: usize| permute.then_some(n);
        for (i, layer) in p.model.layers.iter_mut().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let b = |s: &str| format!("blk.{i}.{s}.bias");
            layer.input_layernorm.gamma = vector(&n("attn_norm"), h)?;
            layer.post_attention_layernorm.gamma = vector(&n("ffn_norm"), h)?;
            let a = &mut layer.self_attn;
            a.q_proj.weight = linear(&n("attn_q"), nh * hd, h, heads(nh))?;
            a.k_proj.weight = linear(&n("attn_k"), nkv * hd, h, heads(nkv))?;
            a.v_proj.weight = linear(&n("attn_v"), nkv * hd, h, None)?;
            a.o_proj.weight = linear(&n("attn_output"), h, nh * hd, None)?;
            if family.qkv_bias {
                if permute {
                    return Err(gguf.err(
                        "tensor `blk.0.attn_q.bias`: biases on a llama.cpp-permuted Llama \
                         projection are not supported"
                            .into(),
                    ));
                }
                for (lin, name, len) in [
                    (&mut a.q_proj, "attn_q", nh * hd),
                    (&mut a.k_proj, "attn_k", nkv * hd),
                    (&mut a.v_proj, "attn_v", nkv * hd),
                ] {
                    lin.bias = Some(vector(&b(name), len)?);
                }
            }
            if family.o_bias {
                a.o_proj.bias = Some(vector(&b("attn_output"), h)?);
            }
            if let Some(norm) = a.q_norm.as_mut() {
                norm.gamma = vector(&n("attn_q_norm"), hd)?;
            }
            if let Some(norm) = a.k_norm.as_mut() {
                norm.gamma = vector(&n("attn_k_norm"), hd)?;
            }
            let m = &mut layer.mlp;
            m.gate_proj.weight = linear(&n("ffn_gate"), cfg.intermediate_size, h, None)?;
            m.up_proj.weight = linear(&n("ffn_up"), cfg.intermediate_size, h, None)?;
            m.down_proj.weight = linear(&n("ffn_down"), h, cfg.intermediate_size, None)?;
        }
        let used = used.into_inner();
        if let Some(extra) = gguf.tensors.keys().find(|t| !used.contains(*t)) {
            return Err(gguf.err(format!(
                "tensor `{extra}` has no place in a {} model; it may change what the model \
                 computes, so the file is refused rather than run without it",
                family.causal_lm
            )));
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_element() {
        for (rows, cols) in [(1, 1), (3, 70), (33, 2), (65, 97), (64, 64), (0, 5)] {
            let w: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
            let t = transpose(&w, rows, cols);
            assert_eq!(t.len(), w.len());
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        w[r * cols + c],
                        "{rows}x{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2)
        let (rows, cols, heads) = (8, 3, 2);
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let half = rows / heads / 2;
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for p in 0..2 {
                for i in 0..half {
                    let src = h * rows / heads + p * half + i;
                    let dst = h * rows / heads + i * 2 + p;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(unpermute_rows(&permuted, rows, cols, heads), hf);
    }
}
