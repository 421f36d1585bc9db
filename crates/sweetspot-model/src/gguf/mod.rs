//! GGUF (llama.cpp's format): metadata, tensor directory, dequantization, and loading into
//! [`Llama`](crate::llama::Llama).
//!
//! Supported tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K. llama.cpp's converter
//! permutes the rows of the query and key projections (for its RoPE layout); loading undoes that
//! permutation so the weights match transformers' layout.
//!
//! One file per concern, everything re-exported here (`crate::gguf::X` is the path to use):
//! - `container`: the file itself: header, metadata ([`Value`]), tensor directory
//!   ([`TensorInfo`]) and the size checks that keep every tensor inside the file ([`Gguf`]).
//! - `dequant`: the ggml tensor types ([`GgmlType`]) and their decoding to f32
//!   ([`dequantize`], [`half_to_f32`]).
//! - `config`: the metadata as a model configuration ([`Gguf::llama_config`]), every
//!   `<arch>.*` key read or refused by name.
//! - `load`: the tensors into a model ([`Llama::from_gguf`](crate::llama::Llama::from_gguf)),
//!   llama.cpp's q/k row permutation undone ([`unpermute_rows`]).

mod config;
mod container;
mod dequant;
mod load;

pub use container::{Gguf, TensorInfo, Value};
pub use dequant::{GgmlType, dequantize, half_to_f32};
pub use load::unpermute_rows;
