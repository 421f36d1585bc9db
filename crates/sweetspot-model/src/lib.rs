//! sweetspot-model: the burn model code of sweetspot.
//!
//! - [`config`]: a Llama-family configuration read from Hugging Face `config.json`.
//! - [`llama`]: the decoder (RMSNorm, RoPE with Llama-3.1 scaling, grouped-query attention,
//!   SwiGLU, tied or untied embeddings), batched with an attention mask and a KV cache.
//! - [`weights`]: safetensors loading (single file or sharded) through burn-store.
//! - [`device`]: the runtime device from a name (`cpu`, `wgpu`, `cuda:0`).
//!
//! Invariants:
//! - No backend type parameter anywhere: tensors carry their runtime device.
//! - A padded row of a batch gives the same logits as the row alone (masking, not truncation).
//! - Parameter paths mirror Hugging Face's names (`model.layers.0.self_attn.q_proj`), so loading
//!   needs no renaming for Llama checkpoints; other layouts go through [`weights::KEY_REMAP`].

pub mod config;
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod tokenizer;
pub mod weights;

pub use config::LlamaConfig;
pub use device::resolve_device;
pub use error::ModelError;
pub use llama::{KvCache, Llama};
pub use tokenizer::Tokenizer;
