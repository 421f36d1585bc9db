//! How many sequences a sampler keeps on its device at once (`batch_size`): a number, or
//! `"auto"`, sized from memory as vLLM sizes its batch from `gpu_memory_utilization`: the
//! key/value cache of every row at its longest (prompt plus `max_new_tokens`) must fit a share
//! of the memory left beside the weights, and no more rows than make the device's matrix
//! products efficient.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `batch_size`: rows at once, or `"auto"` (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rows {
    /// Sized from memory at the start of generation ([`auto_rows`]).
    #[default]
    Auto,
    /// This many rows.
    Fixed(usize),
}

impl Serialize for Rows {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Rows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Rows;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of rows (at least 1) or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rows, E> {
                usize::try_from(v)
                    .map(Rows::Fixed)
                    .map_err(|_| E::custom("too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rows, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("must be at least 1, or \"auto\""))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rows, E> {
                if v == "auto" {
                    Ok(Rows::Auto)
                } else {
                    Err(E::custom(format!(
                        "{v:?}: give a number of rows or \"auto\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Most rows `"auto"` picks on a CPU: each decode step streams every weight from memory once for
/// all its rows, so rows gain until the step's products are compute-bound; 128 rows decoded
/// 1.05-1.23x faster than 64 on the Intel Xeon measured (docs/benchmarks.md), and more rows
/// only hold more cache.
pub const AUTO_ROWS_CPU: usize = 128;
/// Most rows `"auto"` picks on a GPU (vLLM's default `max_num_seqs`).
pub const AUTO_ROWS_GPU: usize = 256;
/// Rows `"auto"` picks on a GPU whose memory is not known (`[run] device_memory` not given).
pub const AUTO_ROWS_UNKNOWN: usize = 16;
/// Share of the host's available RAM (read after the weights are loaded) the cache may take on a
/// CPU.
pub const CPU_CACHE_SHARE: f64 = 0.5;
/// Share of a GPU's memory (`[run] device_memory`) the weights and the cache may take together
/// (vLLM's `gpu_memory_utilization` default).
pub const GPU_MEMORY_SHARE: f64 = 0.9;

/// The cache bytes and the row cap of `"auto"` on a device: on a CPU, [`CPU_CACHE_SHARE`] of
/// `device_memory` less the weights when the recipe gives it, else of `free_ram` (the host's
/// available RAM beside the weights); on a GPU, [`GPU_MEMORY_SHARE`] of `device_memory` less the
/// weights, or unknown (and [`AUTO_ROWS_UNKNOWN`] rows) without it.
pub fn cache_budget(
    on_cpu: bool,
    device_memory: Option<u64>,
    free_ram: Option<u64>,
    weights: u64,
) -> (Option<u64>, usize) {
    if on_cpu {
        let free = device_memory
            .map(|b| b.saturating_sub(weights))
            .or(free_ram);
        (
            free.map(|b| (b as f64 * CPU_CACHE_SHARE) as u64),
            AUTO_ROWS_CPU,
        )
    } else {
        match device_memory {
            Some(b) => (
                Some(((b as f64 * GPU_MEMORY_SHARE) as u64).saturating_sub(weights)),
                AUTO_ROWS_GPU,
            ),
            None => (None, AUTO_ROWS_UNKNOWN),
        }
    }
}

/// Key slots a row's cache buffer grows by: the model keeps room for this many more tokens and
/// writes each step's keys in place, so a row's cache holds its slots rounded up to a multiple
/// of this ([`cache_slots`]).
pub const KV_CACHE_ROOM: usize = 64;

/// The key slots a row's cache buffer holds for `tokens` tokens (a multiple of
/// [`KV_CACHE_ROOM`], at least one).
pub fn cache_slots(tokens: usize) -> usize {
    tokens.next_multiple_of(KV_CACHE_ROOM).max(KV_CACHE_ROOM)
}

/// What [`auto_rows`] chose and why, in words for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChoice {
    /// Rows at once.
    pub rows: usize,
    /// Why (the bound that decided).
    pub why: String,
}

/// What [`auto_rows`] sizes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowBudget {
    /// Key/value cache bytes per token (every layer's keys and values).
    pub kv_bytes_per_token: u64,
    /// Slots a row may need: the longest prompt plus `max_new_tokens`.
    pub tokens_per_row: u64,
    /// Bytes the cache may take, when known.
    pub cache_bytes: Option<u64>,
    /// The recipe's `max_batch_tokens`, when given.
    pub max_batch_tokens: Option<usize>,
    /// Most rows for the device ([`AUTO_ROWS_CPU`], [`AUTO_ROWS_GPU`], or
    /// [`AUTO_ROWS_UNKNOWN`] when `cache_bytes` is unknown).
    pub cap: usize,
    /// Sequences to generate (no more rows than that).
    pub sequences: usize,
}

/// The rows for `batch_size = "auto"`: the fewest of the device's cap, the sequences to
/// generate, the rows whose longest cache fits `cache_bytes`, and the rows `max_batch_tokens`
/// holds at their longest; at least 1.
pub fn auto_rows(b: &RowBudget) -> RowChoice {
    // A row's buffer: its slots rounded up to the cache's room.
    let slots = cache_slots(usize::try_from(b.tokens_per_row).unwrap_or(usize::MAX)) as u64;
    let per_row = b.kv_bytes_per_token.max(1) * slots;
    let mut rows = b.cap.max(1);
    let mut why = format!("at most {} on this device", b.cap);
    if let Some(bytes) = b.cache_bytes {
        let fit = usize::try_from(bytes / per_row).unwrap_or(usize::MAX);
        if fit < rows {
            rows = fit;
            why = format!(
                "a cache of {} per row ({} tokens) within {} of memory",
                human(per_row),
                b.tokens_per_row,
                human(bytes)
            );
        }
    }
    if let Some(t) = b.max_batch_tokens {
        let fit = t / (b.tokens_per_row.max(1) as usize);
        if fit < rows {
            rows = fit;
            why = format!(
                "max_batch_tokens = {t} at {} tokens per row",
                b.tokens_per_row
            );
        }
    }
    if b.sequences < rows {
        rows = b.sequences;
        why = format!("{} sequences to generate", b.sequences);
    }
    RowChoice {
        rows: rows.max(1),
        why,
    }
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} KB", b / 1e3)
    }
}

/// The host's available RAM in bytes (`/proc/meminfo` `MemAvailable`), where it can be read.
pub fn available_ram() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(cache: Option<u64>) -> RowBudget {
        RowBudget {
            kv_bytes_per_token: 46_080, // SmolLM2-135M in f32
            tokens_per_row: 600,
            cache_bytes: cache,
            max_batch_tokens: None,
            cap: AUTO_ROWS_CPU,
            sequences: 128,
        }
    }

    #[test]
    fn the_cap_decides_when_memory_is_plenty() {
        assert_eq!(auto_rows(&budget(Some(10_000_000_000))).rows, 128);
    }

    #[test]
    fn memory_sequences_and_max_batch_tokens_bound_it() {
        // 27.6 MB per row: 100 MB holds 3 rows.
        let c = auto_rows(&budget(Some(100_000_000)));
        assert_eq!(c.rows, 3, "{c:?}");
        assert!(c.why.contains("per row"), "{c:?}");
        let c = auto_rows(&RowBudget {
            sequences: 10,
            ..budget(None)
        });
        assert_eq!(c.rows, 10);
        let c = auto_rows(&RowBudget {
            max_batch_tokens: Some(6000),
            ..budget(None)
        });
        assert_eq!(c.rows, 10);
        // Never 0.
        assert_eq!(auto_rows(&budget(Some(1))).rows, 1);
    }

    #[test]
    fn batch_size_reads_a_number_or_auto() {
        #[derive(Deserialize)]
        struct T {
            batch_size: Rows,
        }
        let t: T = toml::from_str("batch_size = 8").unwrap();
        assert_eq!(t.batch_size, Rows::Fixed(8));
        let t: T = toml::from_str("batch_size = \"auto\"").unwrap();
        assert_eq!(t.batch_size, Rows::Auto);
        assert!(toml::from_str::<T>("batch_size = \"many\"").is_err());
        assert!(toml::from_str::<T>("batch_size = -1").is_err());
    }
}
