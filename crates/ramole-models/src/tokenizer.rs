//! Tokenizers: rebuilt from a GGUF file's `tokenizer.ggml.*` metadata, or loaded from an HF
//! `tokenizer.json`; and the ChatML prompt format of SmolLM2.
//!
//! [`from_gguf`] builds the same tokenizer as `tests/data/fixtures/gguf_to_hf.py` writes: GPT-2 style
//! byte-level BPE over the GGUF token list and merges, digits split one by one before the byte-level
//! split, a byte-level decoder, and the control tokens (token type 3) as added special tokens so that
//! `<|im_start|>` in a text is one token. No BOS is added.

use std::path::Path;
use std::str::FromStr;

use serde_json::{Map, Value, json};
use tokenizers::Tokenizer;

use crate::ModelError;
use crate::gguf::GgufFile;

/// The largest `tokenizer.json` read (real ones are up to a few tens of MB).
pub const MAX_TOKENIZER_JSON_BYTES: u64 = ramole_core::fs::MAX_TEXT_BYTES;

/// GGUF token type of control (special) tokens.
const CONTROL_TOKEN: i64 = 3;

/// `tokenizer.ggml.pre` values whose pre-tokenisation is "digits one by one, then GPT-2 byte-level"
/// (llama.cpp's StarCoder-style pre-tokenizer, used by SmolLM/SmolLM2).
const DIGIT_SPLIT_PRE: [&str; 3] = ["smollm", "starcoder", "refact"];

/// Rebuilds the tokenizer stored in a GGUF file's metadata.
///
/// Needs `tokenizer.ggml.model = "gpt2"`, `tokenizer.ggml.tokens`, `tokenizer.ggml.merges`, and
/// optionally `tokenizer.ggml.token_type` (type 3 = special) and `tokenizer.ggml.pre` (one of the
/// digit-splitting StarCoder-style pre-tokenizers when present).
pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, ModelError> {
    let err = |m: String| ModelError::Tokenizer(format!("{}: {m}", file.path().display()));
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(err(format!("tokenizer.ggml.model is `{model}`; only `gpt2` (byte-level BPE) is supported")));
    }
    if let Some(pre) = file.get("tokenizer.ggml.pre").and_then(|v| v.as_str())
        && !DIGIT_SPLIT_PRE.contains(&pre)
    {
        return Err(err(format!(
            "tokenizer.ggml.pre is `{pre}`; supported pre-tokenizers: {}",
            DIGIT_SPLIT_PRE.join(", ")
        )));
    }
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let merges = file.get_str_array("tokenizer.ggml.merges")?;
    let types = match file.get("tokenizer.ggml.token_type") {
        Some(_) => file.get_int_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(err(format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| **ty == CONTROL_TOKEN)
        .map(|(id, (content, _))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let vocab: Map<String, Value> = tokens.iter().enumerate().map(|(id, t)| (t.to_string(), json!(id))).collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": merges},
    });
    Tokenizer::from_str(&spec.to_string()).map_err(|e| err(format!("cannot build the BPE tokenizer: {e}")))
}

/// Loads an HF `tokenizer.json` (as found in a model folder).
pub fn load_tokenizer_json(path: impl AsRef<Path>) -> Result<Tokenizer, ModelError> {
    let path = path.as_ref();
    // Regular files only (a FIFO or a device is refused before it is opened), size capped.
    let bytes = ramole_core::fs::read_bounded(path, MAX_TOKENIZER_JSON_BYTES).map_err(|e| ModelError::io(path, e))?;
    Tokenizer::from_bytes(&bytes).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
}

/// Token ids of `text`, special tokens in the text parsed, nothing added (no BOS).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ModelError> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| ModelError::Tokenizer(format!("encoding {:?}: {e}", preview(text))))
}

/// The text of `ids`, special tokens included.
pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, ModelError> {
    tokenizer.decode(ids, false).map_err(|e| ModelError::Tokenizer(format!("decoding {} ids: {e}", ids.len())))
}

/// The ChatML prompt for one user turn, ready for the assistant's answer:
/// `<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`.
pub fn chatml_prompt(user: &str) -> String {
    chatml_messages(&[("user", user)])
}

/// The ChatML prompt for a conversation of `(role, text)` turns, ready for the assistant's answer:
/// `<|im_start|>{role}\n{text}<|im_end|>\n` per turn, then `<|im_start|>assistant\n`.
pub fn chatml_messages<R: AsRef<str>, T: AsRef<str>>(turns: &[(R, T)]) -> String {
    let mut prompt = String::new();
    for (role, text) in turns {
        prompt.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", role.as_ref(), text.as_ref()));
    }
    prompt.push_str("<|im_start|>assistant\n");
    prompt
}

/// Tokenizes prompts so that text from users never becomes a special token.
///
/// A chat prompt is laid out by the template (the control tokens `<|im_start|>`, `<|im_end|>`, the role
/// names) around each turn's content; the content is tokenized with special-token parsing off, so
/// `"x<|im_end|>"` in a message is the characters `<|im_end|>`, not the control token, and a user cannot
/// close their turn or forge a system or assistant turn. Only the template inserts control tokens.
#[derive(Debug, Clone)]
pub struct PromptEncoder {
    /// Parses special tokens written in the text (the template's parts, raw completion prompts).
    control: Tokenizer,
    /// The same tokenizer with special-token parsing off (user text).
    content: Tokenizer,
    /// The longest token's text, in bytes: a text of `n` bytes has at least `n / max_token_bytes` tokens.
    max_token_bytes: usize,
}

impl PromptEncoder {
    /// An encoder over `tokenizer`.
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let mut content = tokenizer.clone();
        content.set_encode_special_tokens(true);
        // A token's stored form is at least as long as the text it stands for (byte-level BPE spells a byte
        // in 1 or 2 UTF-8 bytes, SentencePiece spells a space as the 3-byte `▁` and a byte as `<0xAB>`).
        let max_token_bytes = tokenizer.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1);
        Self { control: tokenizer.clone(), content, max_token_bytes }
    }

    /// The tokenizer that parses special tokens in its input.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.control
    }

    /// The fewest tokens a text of `bytes` bytes can have: a bound that needs no tokenization, so that a
    /// prompt far beyond the context is refused before the work of tokenizing it.
    pub fn min_tokens(&self, bytes: usize) -> usize {
        bytes.div_ceil(self.max_token_bytes)
    }

    /// Token ids of a raw prompt, special tokens written in it parsed (a completion prompt: the caller
    /// writes the whole prompt, template included).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        encode(&self.control, text)
    }

    /// Token ids of user text, special tokens written in it kept as text.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        encode(&self.content, text)
    }

    /// Token ids of the ChatML prompt of `(role, text)` turns (see [`chatml_messages`]): the template's
    /// parts with their control tokens, each turn's role and text as text.
    pub fn chatml<R: AsRef<str>, T: AsRef<str>>(&self, turns: &[(R, T)]) -> Result<Vec<u32>, ModelError> {
        let (start, end) = (self.encode_raw("<|im_start|>")?, self.encode_raw("<|im_end|>\n")?);
        let mut ids = Vec::new();
        for (role, text) in turns {
            ids.extend_from_slice(&start);
            ids.extend(self.encode_text(&format!("{}\n", role.as_ref()))?);
            ids.extend(self.encode_text(text.as_ref())?);
            ids.extend_from_slice(&end);
        }
        ids.extend_from_slice(&start);
        ids.extend(self.encode_text("assistant\n")?);
        Ok(ids)
    }
}

/// The first characters of `text`, for error messages.
fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufValue;
    use crate::gguf::writer::gguf_bytes;

    fn s(v: &str) -> GgufValue {
        GgufValue::String(v.into())
    }

    fn strs(v: &[&str]) -> GgufValue {
        GgufValue::Array(v.iter().map(|x| s(x)).collect())
    }

    fn tiny(dir: &tempfile::TempDir, model: &str, pre: &str) -> GgufFile {
        let tokens = ["<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "Ċ"];
        let types = [3, 3, 1, 1, 1, 1, 1, 1, 1, 1].map(GgufValue::I32).to_vec();
        let meta = vec![
            ("tokenizer.ggml.model", s(model)),
            ("tokenizer.ggml.pre", s(pre)),
            ("tokenizer.ggml.tokens", strs(&tokens)),
            ("tokenizer.ggml.merges", strs(&["a b", "Ġ ab"])),
            ("tokenizer.ggml.token_type", GgufValue::Array(types)),
        ];
        let path = dir.path().join(format!("{model}-{pre}.gguf"));
        std::fs::write(&path, gguf_bytes(&meta, &[], 32)).expect("write");
        GgufFile::open(&path).expect("open")
    }

    #[test]
    fn byte_level_bpe_with_special_tokens_and_single_digits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tok = from_gguf(&tiny(&dir, "gpt2", "smollm")).expect("tokenizer");
        let text = "<|im_start|>ab ab12<|im_end|>\n";
        let ids = encode(&tok, text).expect("encode");
        assert_eq!(ids, vec![0, 4, 6, 7, 8, 1, 9]);
        assert_eq!(decode(&tok, &ids).expect("decode"), text);
        assert_eq!(tok.get_vocab_size(true), 10);
    }

    #[test]
    fn refuses_other_tokenizer_models_and_pre_tokenizers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = from_gguf(&tiny(&dir, "llama", "smollm")).expect_err("sentencepiece is not supported");
        assert!(matches!(err, ModelError::Tokenizer(m) if m.contains("`llama`")));
        let err = from_gguf(&tiny(&dir, "gpt2", "llama3")).expect_err("other pre-tokenizer");
        assert!(matches!(err, ModelError::Tokenizer(m) if m.contains("llama3")));
    }

    #[test]
    fn chatml_matches_the_template() {
        assert_eq!(chatml_prompt("Hi?"), "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn missing_tokenizer_json_names_the_file() {
        let err = load_tokenizer_json("/nonexistent/tokenizer.json").expect_err("missing");
        assert!(matches!(err, ModelError::Io { path, .. } if path.ends_with("tokenizer.json")));
    }
}
