//! GGUF (llama.cpp's format): metadata, tensor directory, dequantization, and loading into
//! [`Llama`].
//!
//! Supported tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K. llama.cpp's converter
//! permutes the rows of the query and key projections (for its RoPE layout); loading undoes that
//! permutation so the weights match transformers' layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{LlamaConfig, TokenIds};
use crate::error::ModelError;
use crate::llama::Llama;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer.
    U64(u64),
    /// Any signed integer.
    I64(i64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::U64(v) => Some(*v),
            Self::I64(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }

    /// As a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::F64(v) => Some(*v),
            Self::U64(v) => Some(*v as f64),
            Self::I64(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for messages (arrays by length, long strings cut).
    pub fn short(&self) -> String {
        match self {
            Self::U64(v) => v.to_string(),
            Self::I64(v) => v.to_string(),
            Self::F64(v) => v.to_string(),
            Self::Bool(v) => v.to_string(),
            Self::Str(s) if s.len() > 40 => format!("{:?}...", &s[..s.floor_char_boundary(40)]),
            Self::Str(s) => format!("{s:?}"),
            Self::Array(a) => format!("an array of {}", a.len()),
        }
    }
}

/// ggml tensor types this reader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit blocks of 32 with an f16 scale.
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale.
    Q4_0,
    /// 4-bit blocks of 32 with an f16 scale and minimum.
    Q4_1,
    /// 4-bit k-quant super-blocks of 256.
    Q4K,
    /// 6-bit k-quant super-blocks of 256.
    Q6K,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(&self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }
}

/// One tensor of the directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Its GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, fastest-varying first (ggml's `ne`).
    pub dims: Vec<u64>,
    /// Its type id.
    pub type_id: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        // Checked against the file when it was parsed, so this cannot overflow.
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX) as usize
    }

    /// Whether the tensor is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed GGUF file, its bytes in memory.
pub struct Gguf {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Metadata.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor directory, by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    data_start: usize,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

/// How a read past the end of the bytes at hand is reported.
const TRUNCATED: &str = "truncated at byte";

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The whole file's length (`bytes` may be a prefix of it).
    file_len: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("{TRUNCATED} {}", self.pos));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()?;
        let b = self.take(usize::try_from(n).unwrap_or(usize::MAX))?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("string at byte {} is not UTF-8", self.pos))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U64(self.u8()? as u64),
            1 => Value::I64(self.u8()? as i8 as i64),
            2 => Value::U64(self.u16()? as u64),
            3 => Value::I64(self.u16()? as i16 as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deep".into());
                }
                let inner = self.u32()?;
                let n = self.u64()?;
                // Every item takes at least one byte (strings eight): an array the rest of the
                // file cannot hold is a lie, refused before anything is allocated for it.
                let least = if inner == 8 { 8 } else { 1 };
                let left = self.file_len.saturating_sub(self.pos as u64);
                if n.saturating_mul(least) > left {
                    return Err(format!(
                        "array of {n} items is longer than the {left} bytes left in the file"
                    ));
                }
                let n = n as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(format!("unknown metadata type {t}")),
        })
    }
}

impl Gguf {
    /// Reads and parses `path`.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, bytes)
    }

    /// Reads only the header of `path` (metadata and tensor table, not the weights): enough
    /// for the configuration and the tokenizer. Tensor data cannot be read from the result.
    pub fn open_header(path: &Path) -> Result<Self, ModelError> {
        use std::io::Read;
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file_len = std::fs::metadata(path).map_err(io)?.len();
        let mut want = 8u64 << 20;
        loop {
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .map_err(io)?
                .take(want.min(file_len))
                .read_to_end(&mut bytes)
                .map_err(io)?;
            match Self::parse_prefix(path, bytes, file_len) {
                Err(ModelError::Weights { message, .. })
                    if message.contains(TRUNCATED) && want < file_len =>
                {
                    want = want.saturating_mul(4);
                }
                other => return other,
            }
        }
    }

    /// Parses GGUF bytes; `path` names the file in errors.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self, ModelError> {
        let len = bytes.len() as u64;
        Self::parse_prefix(path, bytes, len)
    }

    /// Parses the first bytes of a GGUF file of `file_len` bytes.
    fn parse_prefix(path: &Path, bytes: Vec<u8>, file_len: u64) -> Result<Self, ModelError> {
        let err = |message: String| ModelError::Weights {
            path: path.to_path_buf(),
            message,
        };
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
            file_len,
        };
        if c.take(4).map_err(&err)? != b"GGUF" {
            return Err(err("not a GGUF file (bad magic)".into()));
        }
        let version = c.u32().map_err(&err)?;
        if !(2..=3).contains(&version) {
            return Err(err(format!(
                "GGUF version {version} is not supported (2, 3)"
            )));
        }
        let n_tensors = c.u64().map_err(&err)?;
        let n_kv = c.u64().map_err(&err)?;
        // A tensor entry takes at least 24 bytes and a metadata entry 13: counts the file
        // cannot hold are refused before the loops trust them.
        let len = file_len;
        if n_tensors.saturating_mul(24) > len {
            return Err(err(format!(
                "header field `tensor_count`: {n_tensors} tensors cannot fit in {len} bytes \
                 (the file is truncated or corrupt)"
            )));
        }
        if n_kv.saturating_mul(13) > len {
            return Err(err(format!(
                "header field `metadata_kv_count`: {n_kv} entries cannot fit in {len} bytes \
                 (the file is truncated or corrupt)"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string().map_err(&err)?;
            let ty = c.u32().map_err(&err)?;
            let v = c
                .value(ty, 0)
                .map_err(|m| err(format!("metadata `{key}`: {m}")))?;
            metadata.insert(key, v);
        }
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = c.string().map_err(&err)?;
            let nd = c.u32().map_err(&err)? as usize;
            if nd > 4 {
                return Err(err(format!("tensor `{name}`: {nd} dimensions")));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(c.u64().map_err(&err)?);
            }
            let type_id = c.u32().map_err(&err)?;
            let offset = c.u64().map_err(&err)?;
            tensors.insert(
                name.clone(),
                TensorInfo {
                    name,
                    dims,
                    type_id,
                    offset,
                },
            );
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32);
        if align == 0 || align > 1 << 20 || !align.is_power_of_two() {
            return Err(err(format!(
                "metadata `general.alignment`: {align} is not a power of two up to 1 MiB"
            )));
        }
        let align = align as usize;
        let data_start = c.pos.div_ceil(align) * align;
        // Every tensor must lie inside the file: sizes from the header are checked here, once,
        // so nothing later allocates from a number the file cannot back.
        for info in tensors.values() {
            let bad = |m: &str| err(format!("tensor `{}`: {m}", info.name));
            let Some(n) = info
                .dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            else {
                return Err(bad("its dimensions overflow"));
            };
            let Some(ty) = GgmlType::from_id(info.type_id) else {
                continue; // refused by name when the tensor is read
            };
            let (per_block, block_bytes) = ty.block();
            if n % per_block as u64 != 0 {
                return Err(bad(&format!("{n} elements is not whole blocks")));
            }
            let size = (n / per_block as u64).saturating_mul(block_bytes as u64);
            let end = (data_start as u64)
                .saturating_add(info.offset)
                .saturating_add(size);
            if end > len {
                return Err(bad(&format!(
                    "dims {:?} at offset {} need {size} bytes, past the end of the file \
                     ({len} bytes)",
                    info.dims, info.offset
                )));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            metadata,
            tensors,
            data_start,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn err(&self, message: String) -> ModelError {
        ModelError::Weights {
            path: self.path.clone(),
            message,
        }
    }

    /// The tensor `name`, dequantized to f32, in row-major order of its reversed dims
    /// (`[ne1, ne0]` for a matrix: PyTorch's `[out, in]`).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| self.err(format!("tensor `{name}` is missing")))?;
        let ty = GgmlType::from_id(info.type_id).ok_or_else(|| {
            self.err(format!(
                "tensor `{name}`: ggml type {} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
                info.type_id
            ))
        })?;
        let n = info.len();
        let (per_block, block_bytes) = ty.block();
        if n % per_block != 0 {
            return Err(self.err(format!("tensor `{name}`: {n} elements is not whole blocks")));
        }
        let size = n / per_block * block_bytes;
        let start = self.data_start.saturating_add(info.offset as usize);
        let raw = self
            .bytes
            .get(start..start.saturating_add(size))
            .ok_or_else(|| self.err(format!("tensor `{name}` lies outside the file")))?;
        Ok(dequantize(ty, raw, n))
    }
}

fn f16(b: &[u8]) -> f32 {
    half_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// IEEE half to f32.
pub fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if mant == 0 {
            sign
        } else {
            // subnormal: normalize
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (mant << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (mant << 13)
    };
    f32::from_bits(bits)
}

/// Dequantizes `n` elements of type `ty` from `raw`.
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(f16)),
        GgmlType::BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
        ),
        GgmlType::Q8_0 => {
            for blk in raw.chunks_exact(34) {
                let d = f16(&blk[0..2]);
                out.extend(blk[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for blk in raw.chunks_exact(18) {
                let d = f16(&blk[0..2]);
                let qs = &blk[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0xf) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for blk in raw.chunks_exact(20) {
                let d = f16(&blk[0..2]);
                let m = f16(&blk[2..4]);
                let qs = &blk[4..20];
                out.extend(qs.iter().map(|&q| (q & 0xf) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q4K => {
            for blk in raw.chunks_exact(144) {
                let d = f16(&blk[0..2]);
                let dmin = f16(&blk[2..4]);
                let scales = &blk[4..16];
                let qs = &blk[16..144];
                let scale_min = |j: usize| -> (u8, u8) {
                    if j < 4 {
                        (scales[j] & 63, scales[j + 4] & 63)
                    } else {
                        (
                            (scales[j + 4] & 0xf) | ((scales[j - 4] >> 6) << 4),
                            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
                        )
                    }
                };
                for (chunk, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min(2 * chunk);
                    let (sc2, m2) = scale_min(2 * chunk + 1);
                    let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                    out.extend(q.iter().map(|&b| d1 * (b & 0xf) as f32 - min1));
                    out.extend(q.iter().map(|&b| d2 * (b >> 4) as f32 - min2));
                }
            }
        }
        GgmlType::Q6K => {
            for blk in raw.chunks_exact(210) {
                let ql = &blk[0..128];
                let qh = &blk[128..192];
                let sc = &blk[192..208];
                let d = f16(&blk[208..210]);
                for half in 0..2 {
                    let ql = &ql[64 * half..];
                    let qh = &qh[32 * half..];
                    let sc = &sc[8 * half..];
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
    }
    out
}

/// Undoes llama.cpp's row permutation of a q/k projection `[rows, cols]` with `heads` heads:
/// its rows were reordered from (head, half, i) to (head, i, half).
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                // GGUF row (h, i, p) holds HF row (h, p, i).
                let src = h * per_head + i * 2 + p;
                let dst = h * per_head + p * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

impl Gguf {
    /// An optional integer metadata value.
    fn meta_opt(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    fn meta_u(&self, key: &str) -> Result<usize, ModelError> {
        self.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| self.err(format!("metadata `{key}` is missing or not an integer")))
    }

    /// The architectures sweetspot loads from GGUF (`general.architecture`): Llama (and Mistral,
    /// which llama.cpp writes as `llama`), Qwen2 and Qwen3.
    pub const ARCHITECTURES: &'static [&'static str] = &["llama", "qwen2", "qwen3"];

    fn arch(&self) -> Result<&str, ModelError> {
        let arch = self
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !Self::ARCHITECTURES.contains(&arch) {
            return Err(self.err(format!(
                "metadata `general.architecture`: `{arch}` is not supported ({})",
                Self::ARCHITECTURES.join(", ")
            )));
        }
        Ok(arch)
    }

    /// The model configuration the metadata describes (`<arch>.*` keys).
    pub fn llama_config(&self) -> Result<LlamaConfig, ModelError> {
        let arch = self.arch()?;
        let k = |key: &str| format!("{arch}.{key}");
        let heads = self.meta_u(&k("attention.head_count"))?;
        let hidden = self.meta_u(&k("embedding_length"))?;
        let vocab = match self.meta_opt(&k("vocab_size")) {
            Some(v) => v as usize,
            None => self
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(<[Value]>::len)
                .ok_or_else(|| self.err(format!("metadata `{}` is missing", k("vocab_size"))))?,
        };
        // llama.cpp names Qwen's q/k/v biases and Qwen3's q/k norms by tensor, not metadata.
        let has = |t: &str| self.tensors.contains_key(t);
        let mut cfg = LlamaConfig {
            model_type: arch.into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.meta_u(&k("feed_forward_length"))?,
            num_hidden_layers: self.meta_u(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: self
                .meta_opt(&k("attention.head_count_kv"))
                .map(|v| v as usize),
            head_dim: self
                .meta_opt(&k("attention.key_length"))
                .map(|v| v as usize),
            rms_norm_eps: self
                .get(&k("attention.layer_norm_rms_epsilon"))
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            rope_theta: self
                .get(&k("rope.freq_base"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
            rope_scaling: None,
            rope_parameters: None,
            max_position_embeddings: self.meta_u(&k("context_length")).unwrap_or(2048),
            tie_word_embeddings: !has("output.weight"),
            attention_bias: arch != "qwen2" && has("blk.0.attn_q.bias"),
            mlp_bias: false,
            bos_token_id: self
                .meta_opt("tokenizer.ggml.bos_token_id")
                .map(|v| v as u32),
            eos_token_id: self
                .meta_opt("tokenizer.ggml.eos_token_id")
                .map(|v| TokenIds::One(v as u32)),
            pad_token_id: self
                .meta_opt("tokenizer.ggml.padding_token_id")
                .map(|v| v as u32),
            hidden_act: "silu".into(),
            sliding_window: self
                .meta_opt(&k("attention.sliding_window"))
                .map(|v| v as usize),
            rope_freqs: None,
        };
        if cfg.head_dim.is_none() && cfg.family().default_head_dim.is_some() {
            // llama.cpp always writes Qwen3's key length; without it the head size is the
            // hidden size over the heads, as llama.cpp computes it (not transformers' default).
            cfg.head_dim = Some(hidden / heads.max(1));
        }
        cfg.check().map_err(|m| {
            // Name the GGUF key the value came from, not the config field it fills.
            let mut m = m;
            for (field, key) in [
                ("vocab_size", "vocab_size"),
                ("hidden_size", "embedding_length"),
                ("intermediate_size", "feed_forward_length"),
                ("num_hidden_layers", "block_count"),
                ("num_attention_heads", "attention.head_count"),
                ("num_key_value_heads", "attention.head_count_kv"),
                ("head_dim", "attention.key_length"),
                ("max_position_embeddings", "context_length"),
                ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
                ("rope_theta", "rope.freq_base"),
                ("sliding_window", "attention.sliding_window"),
            ] {
                m = m.replace(
                    &format!("field `{field}`"),
                    &format!("metadata `{}`", k(key)),
                );
            }
            self.err(m)
        })?;
        self.audit_metadata(&cfg)?;
        self.check_shapes(&cfg)?;
        if self.tensors.contains_key("rope_freqs.weight") {
            let f = self.dequantize("rope_freqs.weight")?;
            let half = cfg.head_dim() / 2;
            if f.len() != half || !f.iter().all(|x| x.is_finite() && *x > 0.0) {
                return Err(self.err(format!(
                    "tensor `rope_freqs.weight`: {} factors, expected {half} positive ones (one \
                     per RoPE frequency)",
                    f.len()
                )));
            }
            cfg.rope_freqs = Some(f);
        }
        Ok(cfg)
    }

    /// Every `<arch>.*` metadata key is implemented or refused by name: a GGUF setting that
    /// changes the computation is never ignored.
    fn audit_metadata(&self, cfg: &LlamaConfig) -> Result<(), ModelError> {
        const READ: &[&str] = &[
            "block_count",
            "context_length",
            "embedding_length",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.key_length",
            "attention.layer_norm_rms_epsilon",
            "attention.sliding_window",
            "rope.freq_base",
            "vocab_size",
        ];
        let prefix = format!("{}.", cfg.model_type);
        for (key, value) in &self.metadata {
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            if READ.contains(&name) {
                continue;
            }
            let ok = match name {
                // Checked against the head size: a partial rotary dimension is not supported.
                "rope.dimension_count" | "attention.value_length" => {
                    value.as_u64() == Some(cfg.head_dim() as u64)
                }
                "rope.scaling.type" => value.as_str() == Some("none"),
                _ => false,
            };
            if !ok {
                return Err(self.err(format!(
                    "metadata `{key}` ({}) is not supported by sweetspot; it changes what the \
                     model computes, so the file is refused rather than run without it",
                    value.short()
                )));
            }
        }
        Ok(())
    }

    /// The header's sizes against the tensors the file really holds (whose extents were checked
    /// against the file's length), before a model is allocated from them.
    fn check_shapes(&self, cfg: &LlamaConfig) -> Result<(), ModelError> {
        let (h, hd) = (cfg.hidden_size as u64, cfg.head_dim() as u64);
        let last = cfg.num_hidden_layers - 1;
        let expect = [
            (
                "token_embd.weight".to_string(),
                [h, cfg.vocab_size as u64],
                "embedding_length / vocab_size",
            ),
            (
                "blk.0.attn_q.weight".into(),
                [h, cfg.num_attention_heads as u64 * hd],
                "attention.head_count / attention.key_length",
            ),
            (
                "blk.0.attn_k.weight".into(),
                [h, cfg.kv_heads() as u64 * hd],
                "attention.head_count_kv",
            ),
            (
                "blk.0.ffn_gate.weight".into(),
                [h, cfg.intermediate_size as u64],
                "feed_forward_length",
            ),
            (
                format!("blk.{last}.ffn_gate.weight"),
                [h, cfg.intermediate_size as u64],
                "block_count",
            ),
        ];
        let fields_of = |f: &str| {
            f.split(" / ")
                .map(|k| format!("{}.{k}", cfg.model_type))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for (name, dims, fields) in expect {
            let Some(info) = self.tensors.get(&name) else {
                return Err(self.err(format!(
                    "tensor `{name}` is missing (metadata {} may be wrong)",
                    fields_of(fields)
                )));
            };
            if info.dims != dims {
                return Err(self.err(format!(
                    "metadata {} describe tensor `{name}` as {dims:?}, but the file holds {:?}",
                    fields_of(fields),
                    info.dims
                )));
            }
        }
        Ok(())
    }
}

/// `[rows, cols]` row-major to `[cols, rows]` row-major.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = w[r * cols + c];
                }
            }
        }
    }
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
    fn half_floats() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(half_to_f32(0x7bff), 65504.0);
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
