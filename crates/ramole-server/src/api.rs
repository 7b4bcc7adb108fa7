//! The OpenAI request bodies this server reads, with RAMoLE's extension fields.

use ramole_core::lora::Composition;
use ramole_pipeline::Strategy;
use serde::Deserialize;

use crate::ServerError;

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// A completion's `prompt`: a string, token ids, or a list of either (one element: this server answers one
/// prompt per request).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// A string.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// Several strings.
    Texts(Vec<String>),
    /// Several lists of token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// The one prompt of a completion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    /// Text, tokenized by the server.
    Text(String),
    /// Token ids, as given.
    Tokens(Vec<u32>),
}

/// An adapter and its weight in an explicit mixture (`adapters` extension field).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterWeight {
    /// The adapter's name in the pool.
    pub name: String,
    /// Its weight (default 1).
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields `/v1/completions` and `/v1/chat/completions` share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    /// The base model's name, an adapter's name, or `ramole` (routing).
    pub model: String,
    /// Most tokens to generate.
    pub max_tokens: Option<u64>,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature; absent or 0: greedy.
    pub temperature: Option<f32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Seed of the sampler.
    pub seed: Option<u64>,
    /// Strings that end the answer (not included).
    pub stop: Option<OneOrMany>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Answers per prompt (only 1).
    pub n: Option<u64>,
    /// Extension: an explicit set of adapters with weights.
    pub adapters: Option<Vec<AdapterWeight>>,
    /// Extension: how `adapters` combine (`single`, `mixture`, `fusion`, `arrow`, `gate`).
    pub composition: Option<String>,
    /// Extension: LoRAs retrieved per input with `model: "ramole"`.
    pub top_k: Option<u64>,
    /// Extension: the strategy with `model: "ramole"` (`base`, `selection`, `mixture`, `fusion`,
    /// `arrow`, `gate`).
    pub strategy: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt: a string or token ids, or a list holding one of them.
    pub prompt: PromptField,
    /// The shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// A chat message's content: text, or a list of parts of which the text ones are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Text.
    Text(String),
    /// Parts (`{"type": "text", "text": ...}`).
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// The part's type (only `text` is read).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its text.
    #[serde(default)]
    pub text: Option<String>,
}

/// A chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: Content,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// The shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /v1/adapters` with a JSON body: an adapter folder on the server's disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterUpload {
    /// The LoRA's name.
    pub name: String,
    /// A PEFT adapter folder on the server.
    pub path: std::path::PathBuf,
    /// Sample inputs of its task (its embedding is their mean).
    pub samples: Vec<String>,
}

/// Parses a JSON body, naming the problem (and the field serde points at).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServerError> {
    serde_json::from_slice(body)
        .map_err(|e| ServerError::Invalid { param: None, message: format!("request body: {e}") })
}

impl Common {
    /// `max_tokens` (or `max_completion_tokens`), if given.
    pub fn max_tokens(&self) -> Result<Option<usize>, ServerError> {
        self.max_tokens
            .or(self.max_completion_tokens)
            .map(|n| usize::try_from(n).map_err(|_| invalid("max_tokens", format!("{n} is too large"))))
            .transpose()
    }

    /// The stop strings (empty ones refused).
    pub fn stops(&self) -> Result<Vec<String>, ServerError> {
        let stops = self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default();
        if stops.iter().any(String::is_empty) {
            return Err(invalid("stop", "an empty stop string".into()));
        }
        if stops.len() > 16 {
            return Err(invalid("stop", format!("{} stop strings; at most 16", stops.len())));
        }
        Ok(stops)
    }

    /// Checks `n` (only 1 answer per prompt).
    pub fn check_n(&self) -> Result<(), ServerError> {
        match self.n {
            None | Some(1) => Ok(()),
            Some(n) => Err(invalid("n", format!("{n} answers per prompt: this server gives 1"))),
        }
    }

    /// The `composition` extension field.
    pub fn composition(&self) -> Result<Option<Composition>, ServerError> {
        let Some(name) = self.composition.as_deref() else { return Ok(None) };
        let c = match name {
            "single" => Composition::Single,
            "mixture" => Composition::Mixture,
            "fusion" => Composition::Fusion,
            "arrow" => Composition::Arrow(Default::default()),
            "gate" => Composition::Gate,
            other => {
                return Err(invalid(
                    "composition",
                    format!("`{other}`: expected single, mixture, fusion, arrow or gate"),
                ));
            }
        };
        Ok(Some(c))
    }

    /// The `strategy` extension field.
    pub fn strategy(&self) -> Result<Option<Strategy>, ServerError> {
        self.strategy
            .as_deref()
            .map(|s| s.parse::<Strategy>().map_err(|e| invalid("strategy", e.to_string())))
            .transpose()
    }
}

impl CompletionRequest {
    /// The one prompt: a string or token ids.
    pub fn prompt(&self) -> Result<PromptInput, ServerError> {
        let one = |n: usize| invalid("prompt", format!("{n} prompts: this server takes one per request"));
        let input = match &self.prompt {
            PromptField::Text(t) => PromptInput::Text(t.clone()),
            PromptField::Tokens(ids) => PromptInput::Tokens(ids.clone()),
            PromptField::Texts(v) => match v.as_slice() {
                [t] => PromptInput::Text(t.clone()),
                other => return Err(one(other.len())),
            },
            PromptField::TokenLists(v) => match v.as_slice() {
                [ids] => PromptInput::Tokens(ids.clone()),
                other => return Err(one(other.len())),
            },
        };
        match &input {
            PromptInput::Text(t) if t.is_empty() => Err(invalid("prompt", "empty prompt".into())),
            PromptInput::Tokens(ids) if ids.is_empty() => Err(invalid("prompt", "no token".into())),
            _ => Ok(input),
        }
    }
}

impl ChatRequest {
    /// `(role, text)` of every message, and the text the retriever reads (the last user message).
    pub fn turns(&self) -> Result<(Vec<(String, String)>, String), ServerError> {
        if self.messages.is_empty() {
            return Err(invalid("messages", "no message".into()));
        }
        let mut turns = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer") {
                return Err(invalid(
                    &format!("messages[{i}].role"),
                    format!("`{}`: expected system, user or assistant", m.role),
                ));
            }
            let text = match &m.content {
                Content::Text(t) => t.clone(),
                Content::Parts(parts) => parts
                    .iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text.clone())
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            let role = if m.role == "developer" { "system".to_string() } else { m.role.clone() };
            turns.push((role, text));
        }
        let query = turns
            .iter()
            .rev()
            .find(|(r, _)| r == "user")
            .map(|(_, t)| t.clone())
            .ok_or_else(|| invalid("messages", "no user message".into()))?;
        if query.trim().is_empty() {
            return Err(invalid("messages", "the last user message is empty".into()));
        }
        Ok((turns, query))
    }
}

fn invalid(param: &str, message: String) -> ServerError {
    ServerError::Invalid { param: Some(param.to_string()), message }
}
