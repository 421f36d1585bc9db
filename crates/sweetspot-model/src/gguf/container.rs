//! The GGUF container: the header, the metadata key/value table and the tensor directory,
//! parsed from a file's bytes, and a tensor's bytes handed to [`super::dequant`].
//!
//! Invariants:
//! - Every count and size the header states is checked against the file's length before it is
//!   trusted: array lengths, the tensor and metadata counts, and each tensor's extent (its dims,
//!   type and offset must lie inside the file), so nothing later allocates from a number the file
//!   cannot back.
//! - Errors are [`ModelError::Weights`] naming the file and, where there is one, the metadata
//!   key or tensor at fault.
//! - [`Gguf::open_header`] reads only as much of the file as the header needs; the tensors of
//!   such a [`Gguf`] cannot be read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::dequant::{GgmlType, dequantize};
use crate::error::ModelError;

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

    pub(super) fn err(&self, message: String) -> ModelError {
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
