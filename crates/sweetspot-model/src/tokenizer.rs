//! Tokenizers (through the `tokenizers` crate) and chat templates (through `minijinja`),
//! rendered as transformers' `apply_chat_template(..., add_generation_prompt=True)` renders them.

use std::path::Path;

use serde::Serialize;
use sweetspot_core::Message;
use sweetspot_core::atomic::write_atomic;

use crate::error::ModelError;
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

    /// Builds the tokenizer a GGUF file describes, as transformers 5 does when it loads the file
    /// with `gguf_file=`: byte-level BPE (`tokenizer.ggml.model = "gpt2"`, split by the regex
    /// `tokenizer.ggml.pre` names) or SentencePiece BPE (`llama`: Metaspace, byte fallback,
    /// merges from the file or derived from the scores); control tokens and the tokens the
    /// special ids name are special, user-defined ones (`<think>`) added whole; BOS/EOS added as
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token` say (BOS by default for `llama`).
    pub fn from_gguf(gguf: &Gguf, path: &Path) -> Result<Self, ModelError> {
        let err = |m: String| tok_err(path, m);
        let model = gguf
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("");
        if model != "gpt2" && model != "llama" {
            return Err(err(format!(
                "metadata `tokenizer.ggml.model`: `{model}` is not supported (gpt2, llama)"
            )));
        }
        let strings = |key: &str| -> Result<Option<Vec<String>>, ModelError> {
            let Some(v) = gguf.get(key) else {
                return Ok(None);
            };
            v.as_array()
                .ok_or_else(|| err(format!("metadata `{key}`: not an array")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("metadata `{key}`: not a string")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        };
        let tokens = strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| err("metadata `tokenizer.ggml.tokens` is missing".into()))?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let id_of = |key: &str| gguf.get(key).and_then(Value::as_u64);
        let special_ids: Vec<u64> = [
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
        ]
        .iter()
        .filter_map(|k| id_of(k))
        .collect();
        let flag = |key: &str| match gguf.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        let byte_level = model == "gpt2";
        let alphabet = byte_alphabet();
        let spelled = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        // Control tokens and the special ids' tokens are special (a byte-level control token
        // outside the byte alphabet is a llama.cpp mislabel, skipped as transformers skips it);
        // user-defined ones are added whole but not special.
        let added: Vec<serde_json::Value> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let ty = types.get(i).copied().unwrap_or(1);
                let named = special_ids.contains(&(i as u64));
                let special = match ty {
                    3 if !byte_level || spelled(t) => true,
                    4 => false,
                    _ if named && (!byte_level || spelled(t)) => true,
                    _ => return None,
                };
                Some(serde_json::json!({
                    "id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special
                }))
            })
            .collect();
        let (model_spec, pre_tokenizer, decoder) = if byte_level {
            let respell = |t: &str| -> String {
                if spelled(t) {
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
            let merges =
                merges.ok_or_else(|| err("metadata `tokenizer.ggml.merges` is missing".into()))?;
            let pre = gguf
                .get("tokenizer.ggml.pre")
                .and_then(Value::as_str)
                .unwrap_or("default");
            (
                serde_json::json!({"type": "BPE", "dropout": null, "unk_token": null,
                    "continuing_subword_prefix": "", "end_of_word_suffix": "",
                    "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                    "vocab": vocab, "merges": merges}),
                byte_level_split(pre).map_err(err)?,
                serde_json::json!({"type": "ByteLevel", "add_prefix_space": true,
                    "trim_offsets": true, "use_regex": true}),
            )
        } else {
            let scores: Vec<f64> = gguf
                .get("tokenizer.ggml.scores")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            let merges: Vec<(String, String)> = match merges {
                Some(m) => m
                    .iter()
                    .map(|m| {
                        let (l, r) = m.split_once(' ').unwrap_or((m, ""));
                        (l.to_string(), r.to_string())
                    })
                    .collect(),
                None => {
                    if scores.len() != tokens.len() {
                        return Err(err(format!(
                            "metadata `tokenizer.ggml.scores`: {} scores for {} tokens (the \
                             merges are derived from them)",
                            scores.len(),
                            tokens.len()
                        )));
                    }
                    merges_from_scores(&tokens, &scores)
                }
            };
            let vocab: serde_json::Map<String, serde_json::Value> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), serde_json::Value::from(i)))
                .collect();
            (
                serde_json::json!({"type": "BPE", "dropout": null, "unk_token": null,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges}),
                serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}",
                    "prepend_scheme": "first", "split": false}),
                serde_json::json!({"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
            )
        };
        // What encoding with special tokens adds (transformers' TemplateProcessing).
        let token_at = |key: &str| id_of(key).and_then(|i| tokens.get(i as usize).map(|t| (i, t)));
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(!byte_level);
        let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let mut specials = serde_json::Map::new();
        let mut single = vec![serde_json::json!({"Sequence": {"id": "A", "type_id": 0}})];
        for (on, key, front) in [
            (add_bos, "tokenizer.ggml.bos_token_id", true),
            (add_eos, "tokenizer.ggml.eos_token_id", false),
        ] {
            if !on {
                continue;
            }
            let Some((id, t)) = token_at(key) else {
                return Err(err(format!(
                    "metadata `{key}` is missing, but the file asks for the token to be added"
                )));
            };
            let piece = serde_json::json!({"SpecialToken": {"id": t, "type_id": 0}});
            if front {
                single.insert(0, piece);
            } else {
                single.push(piece);
            }
            specials.insert(
                t.clone(),
                serde_json::json!({"id": t, "ids": [id], "tokens": [t]}),
            );
        }
        let post_processor = if specials.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!({"type": "TemplateProcessing", "single": single,
                "pair": single, "special_tokens": specials})
        };
        let spec = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": decoder,
            "model": model_spec,
        });
        let bytes = serde_json::to_vec(&spec).map_err(|e| err(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| err(e.to_string()))?;
        let id_token = |key: &str| token_at(key).map(|(_, t)| t.clone());
        let eos_ids: Vec<u32> = id_of("tokenizer.ggml.eos_token_id")
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

    /// A token id's text, if the vocabulary has it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
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
        Ok(write_atomic(
            &dir.join("tokenizer_config.json"),
            text.as_bytes(),
        )?)
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

    /// A prompt's token ids as a sampler feeds them to the policy: rendered by the chat template
    /// with the generation prompt when the model has one, else a text prompt as plain text with
    /// the tokenizer's special tokens (a chat prompt without a template is an error). The native
    /// sampler, `sweetspot serve` and the `openai` sampler all use it, so they ask the same thing.
    pub fn encode_prompt(&self, prompt: &sweetspot_core::Prompt) -> Result<Vec<u32>, ModelError> {
        if self.has_chat_template() {
            self.encode_chat(&prompt.content.to_messages())
        } else {
            match &prompt.content {
                sweetspot_core::PromptContent::Text(t) => self.encode(t, true),
                sweetspot_core::PromptContent::Chat(_) => Err(ModelError::Input(format!(
                    "prompt `{}` is a chat, but the model has no chat template",
                    prompt.id
                ))),
            }
        }
    }

    /// The token ids a reward model reads for (prompt, response): the prompt's turns and the
    /// response as the last assistant turn, through [`Tokenizer::encode_messages`] without a
    /// generation prompt. The native reward models and the `http` reward client both use it.
    pub fn encode_scored(
        &self,
        prompt: &sweetspot_core::Prompt,
        response: &str,
    ) -> Result<Vec<u32>, ModelError> {
        let mut messages = prompt.content.to_messages();
        messages.push(Message {
            role: "assistant".into(),
            content: response.to_string(),
        });
        self.encode_messages(&messages, false)
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

/// Llama-3's split regex (transformers' `_LLAMA3_SPLIT`, for the `tokenizer.ggml.pre` values
/// that use it).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex (transformers' `qwen2` `PRETOKENIZE_REGEX`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer of a byte-level GGUF vocabulary, from `tokenizer.ggml.pre`, as transformers
/// picks it: Llama-3's or Qwen2's split regex for the names that use them, GPT-2's byte-level
/// regex for any other name (transformers' default); the names transformers maps to other
/// regexes sweetspot does not implement are refused.
fn byte_level_split(pre: &str) -> Result<serde_json::Value, String> {
    const LLAMA3: &[&str] = &[
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "jina-v5-nano",
        "dbrx",
        "smaug-bpe",
    ];
    const QWEN2: &[&str] = &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"];
    const REFUSED: &[&str] = &[
        "tekken",
        "qwen35",
        "gpt-4o",
        "llama4",
        "kanana2",
        "talkie",
        "minimax-m2",
    ];
    let split = |regex: &str| {
        serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}]})
    };
    if LLAMA3.contains(&pre) {
        Ok(split(LLAMA3_SPLIT))
    } else if QWEN2.contains(&pre) {
        Ok(split(QWEN2_SPLIT))
    } else if REFUSED.contains(&pre) {
        Err(format!(
            "metadata `tokenizer.ggml.pre`: `{pre}` splits text with a regex sweetspot does not \
             implement; load the model's Hugging Face folder (tokenizer.json) instead"
        ))
    } else {
        Ok(
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
            "trim_offsets": true, "use_regex": true}),
        )
    }
}

/// SentencePiece merges recovered from a vocabulary and its scores, as transformers'
/// `generate_merges` recovers them for a GGUF without merges: every split of a token into two
/// tokens of the vocabulary is a merge with the token's score; per token, ordered by the ids of
/// the two halves; then all stably sorted by (score, left length, right length), descending.
fn merges_from_scores(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    // Python dict semantics: a repeated token keeps its first position and its last value.
    let mut vocab: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.as_str(), i).is_none() {
            order.push(t.as_str());
        }
        score_of.insert(t.as_str(), scores[i]);
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| (&token[..at], &token[at..]))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
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
