//! Tokenizers (through the `tokenizers` crate) and chat templates (through `minijinja`),
//! rendered as transformers' `apply_chat_template(..., add_generation_prompt=True)` renders them.

use std::path::Path;

use serde::Serialize;
use sweetspot_core::Message;

use crate::error::ModelError;
use crate::export::write_atomic;
use crate::gguf::{Gguf, Value};

/// A tokenizer with its chat template and end tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    stop_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

/// Tokens every chat model family here ends a turn with.
const END_TOKENS: [&str; 4] = ["<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "</s>"];

fn tok_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Weights {
        path: path.to_path_buf(),
        message: format!("tokenizer: {e}"),
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`, and `tokenizer_config.json` or `chat_template.jinja` for the chat
    /// template and special tokens, from a model folder. `eos_ids` are the model config's.
    pub fn from_dir(dir: &Path, eos_ids: &[u32]) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| tok_err(&path, e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| tok_err(&cfg_path, e))?,
            Err(_) => serde_json::Value::Null,
        };
        let mut chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take `default`.
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        let jinja = dir.join("chat_template.jinja");
        if let Ok(text) = std::fs::read_to_string(&jinja) {
            chat_template = Some(text);
        }
        let mut t = Self {
            inner,
            chat_template,
            bos_token: token_string(cfg.get("bos_token")),
            eos_token: token_string(cfg.get("eos_token")),
            stop_ids: eos_ids.to_vec(),
        };
        t.add_end_tokens();
        Ok(t)
    }

    /// Builds the tokenizer a GGUF file describes (byte-level BPE, `tokenizer.ggml.model =
    /// "gpt2"`), as transformers does when it loads the file with `gguf_file=`.
    pub fn from_gguf(gguf: &Gguf, path: &Path) -> Result<Self, ModelError> {
        let err = |m: String| tok_err(path, m);
        let model = gguf
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(err(format!(
                "metadata `tokenizer.ggml.model`: `{model}` is not supported (gpt2)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>, ModelError> {
            gguf.get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| err(format!("metadata `{key}` is missing")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("metadata `{key}`: not a string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let alphabet = byte_alphabet();
        let respell = |t: &str| -> String {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.to_string()
            } else {
                t.bytes()
                    .map(|b| BYTE_CHARS.with(|m| m[b as usize]))
                    .collect()
            }
        };
        let vocab: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (respell(t), serde_json::Value::from(i)))
            .collect();
        let added: Vec<serde_json::Value> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let ty = types.get(i).copied().unwrap_or(1);
                let special = match ty {
                    3 if t.chars().all(|c| alphabet.contains(&c)) => true,
                    4 => false,
                    _ => return None,
                };
                Some(serde_json::json!({
                    "id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special
                }))
            })
            .collect();
        let add_prefix_space = gguf
            .get("tokenizer.ggml.add_space_prefix")
            .is_some_and(|v| matches!(v, Value::Bool(true)));
        let spec = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": add_prefix_space,
                              "trim_offsets": true, "use_regex": true},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true,
                               "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "",
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        let bytes = serde_json::to_vec(&spec).map_err(|e| err(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| err(e.to_string()))?;
        let id_token = |key: &str| {
            gguf.get(key)
                .and_then(Value::as_u64)
                .and_then(|i| tokens.get(i as usize).cloned())
        };
        let eos_ids: Vec<u32> = gguf
            .get("tokenizer.ggml.eos_token_id")
            .and_then(Value::as_u64)
            .map(|i| vec![i as u32])
            .unwrap_or_default();
        let mut t = Self {
            inner,
            chat_template: gguf
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
            bos_token: id_token("tokenizer.ggml.bos_token_id"),
            eos_token: id_token("tokenizer.ggml.eos_token_id"),
            stop_ids: eos_ids,
        };
        t.add_end_tokens();
        Ok(t)
    }

    fn add_end_tokens(&mut self) {
        let mut names: Vec<&str> = END_TOKENS.to_vec();
        if let Some(e) = self.eos_token.clone()
            && let Some(id) = self.inner.token_to_id(&e)
        {
            self.stop_ids.push(id);
        }
        names.retain(|n| self.inner.token_to_id(n).is_some());
        for n in names {
            if let Some(id) = self.inner.token_to_id(n) {
                self.stop_ids.push(id);
            }
        }
        self.stop_ids.sort_unstable();
        self.stop_ids.dedup();
    }

    /// Token ids that end a response.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes `text`; `add_special` adds what the tokenizer's post-processor adds (a BOS, say).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, ModelError> {
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Input(format!("cannot tokenize: {e}")))
    }

    /// Decodes `ids`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Input(format!("cannot decode: {e}")))
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (chat template, BOS and EOS tokens)
    /// to `dir`, as transformers reads them.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join("tokenizer.json");
        let json = self.inner.to_string(false).map_err(|e| tok_err(&path, e))?;
        write_atomic(&path, json.as_bytes())?;
        let mut cfg = serde_json::Map::new();
        cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        if let Some(t) = &self.chat_template {
            cfg.insert("chat_template".into(), t.clone().into());
        }
        if let Some(t) = &self.bos_token {
            cfg.insert("bos_token".into(), t.clone().into());
        }
        if let Some(t) = &self.eos_token {
            cfg.insert("eos_token".into(), t.clone().into());
        }
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(cfg))
            .map_err(|e| tok_err(&path, e))?;
        write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())
    }

    /// The chat template's source, when there is one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Whether a chat template is available.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders `messages` with the chat template, as transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does.
    pub fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let Some(template) = &self.chat_template else {
            return Err(ModelError::Input(
                "the tokenizer has no chat template (tokenizer_config.json `chat_template`, \
                 chat_template.jinja or GGUF `tokenizer.chat_template`)"
                    .into(),
            ));
        };
        render_template(
            template,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }

    /// The token ids of a chat prompt: the rendered template, encoded without adding special
    /// tokens (the template writes them itself, so there is no double BOS).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, ModelError> {
        self.encode_messages(messages, true)
    }

    /// The token ids of a whole conversation (a reward model's input: the prompt's turns and the
    /// response as the last assistant turn), rendered without a generation prompt and encoded
    /// without adding special tokens, as `apply_chat_template(messages, tokenize=True)` does.
    pub fn encode_messages(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ModelError> {
        let text = self.render_chat(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
}

#[derive(Serialize)]
struct Ctx<'a> {
    messages: &'a [Message],
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
}

/// Renders a Hugging Face chat template (Jinja, with transformers' settings: `trim_blocks`,
/// `lstrip_blocks`, Python string methods, `raise_exception`, `strftime_now`).
pub fn render_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String, ModelError> {
    let mut env = minijinja::Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| ModelError::Input(format!("chat template: {e}")))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_function("strftime_now", |_fmt: String| -> String {
        // Templates use it for "today's date" in a system prompt; a fixed date keeps renders
        // reproducible.
        "26 Jul 2024".to_string()
    });
    let err = |e: minijinja::Error| ModelError::Input(format!("chat template: {e}"));
    env.add_template("chat", template).map_err(err)?;
    let tmpl = env.get_template("chat").map_err(err)?;
    tmpl.render(minijinja::value::Serde(Ctx {
        messages,
        add_generation_prompt,
        bos_token: bos_token.unwrap_or(""),
        eos_token: eos_token.unwrap_or(""),
    }))
    .map_err(err)
}

thread_local! {
    static BYTE_CHARS: [char; 256] = byte_chars();
}

/// GPT-2's byte-to-unicode table.
fn byte_chars() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut out = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        out[b as usize] = if printable.contains(&b) {
            char::from_u32(b).unwrap_or('?')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('?')
        };
    }
    out
}

fn byte_alphabet() -> std::collections::HashSet<char> {
    BYTE_CHARS.with(|m| m.iter().copied().collect())
}
