//! Request files: the format of `tests/data/fixtures/tiny-llama/cases.json`.

use std::path::Path;

use ramole_core::lora::Composition;
use ramole_mole::RowRequest;
use serde::Deserialize;

use crate::{BatchError, Sampling};

/// What a request feeds the model.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestInput {
    /// Token ids, as given.
    Ids(Vec<u32>),
    /// Text, tokenized by the model's tokenizer (special tokens such as `<|im_start|>` parsed, no BOS
    /// added).
    Prompt(String),
}

/// One request of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Its name (keys `logits.<name>` / `greedy.<name>` in outputs).
    pub name: String,
    /// The prompt.
    pub input: RequestInput,
    /// Adapters, weights and composition.
    pub row: RowRequest,
    /// Tokens to generate after the prompt (0: prompt only).
    pub max_new_tokens: usize,
    /// How to pick generated tokens.
    pub sampling: Sampling,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default, alias = "token_ids")]
    input_ids: Option<Vec<i64>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    adapters: Vec<(String, f32)>,
    #[serde(default)]
    composition: Composition,
    #[serde(default)]
    greedy_new_tokens: Option<usize>,
}

#[derive(Deserialize)]
struct RawFile {
    cases: Vec<RawCase>,
}

/// A parsed request file.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFile {
    /// The requests, in file order.
    pub requests: Vec<Request>,
}

impl RequestFile {
    /// Reads a request file. Fails on invalid JSON, a case with neither `input_ids` nor `prompt`,
    /// negative or oversized token ids, or duplicate names; other checks (empty prompt, context
    /// length, adapters) happen per request when the batch runs.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BatchError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BatchError::Io { path: path.into(), source })?;
        Self::from_json(&text).map_err(|message| BatchError::RequestFile { path: path.into(), message })
    }

    /// Parses the JSON text of a request file.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawFile = serde_json::from_str(text).map_err(|e| format!("not a valid request file: {e}"))?;
        let mut requests = Vec::with_capacity(raw.cases.len());
        for case in raw.cases {
            if requests.iter().any(|r: &Request| r.name == case.name) {
                return Err(format!("duplicate request name `{}`", case.name));
            }
            let input = match (case.input_ids, case.prompt) {
                (Some(ids), _) => RequestInput::Ids(
                    ids.iter()
                        .map(|&t| u32::try_from(t))
                        .collect::<Result<_, _>>()
                        .map_err(|_| format!("request `{}`: token ids must be in 0..2^32", case.name))?,
                ),
                (None, Some(p)) => RequestInput::Prompt(p),
                (None, None) => return Err(format!("request `{}`: needs `input_ids` or `prompt`", case.name)),
            };
            requests.push(Request {
                name: case.name,
                input,
                row: RowRequest { adapters: case.adapters, composition: case.composition },
                max_new_tokens: case.greedy_new_tokens.unwrap_or(0),
                sampling: Sampling::Greedy,
            });
        }
        Ok(Self { requests })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture_formats() {
        let f = RequestFile::from_json(
            r#"{"description": "x", "tolerance": {}, "cases": [
                {"name": "a", "input_ids": [1, 2], "adapters": [["x", 0.5]], "composition": "mixture", "greedy_new_tokens": 3},
                {"name": "b", "prompt": "hi", "token_ids": [5], "adapters": [], "composition": "single"},
                {"name": "c", "prompt": "hi"}]}"#,
        )
        .expect("valid");
        assert_eq!(f.requests.len(), 3);
        assert_eq!(f.requests[0].input, RequestInput::Ids(vec![1, 2]));
        assert_eq!(f.requests[0].row.composition, Composition::Mixture);
        assert_eq!(f.requests[0].row.adapters, vec![("x".to_string(), 0.5)]);
        assert_eq!(f.requests[0].max_new_tokens, 3);
        assert_eq!(f.requests[1].input, RequestInput::Ids(vec![5]));
        assert_eq!(f.requests[2].input, RequestInput::Prompt("hi".into()));
        assert_eq!(f.requests[2].row.composition, Composition::Single);
    }

    #[test]
    fn rejects_bad_files() {
        for bad in [
            "not json",
            r#"{"cases": [{"name": "a"}]}"#,
            r#"{"cases": [{"name": "a", "input_ids": [-1]}]}"#,
            r#"{"cases": [{"name": "a", "input_ids": [1]}, {"name": "a", "input_ids": [1]}]}"#,
            r#"{"cases": [{"name": "a", "input_ids": [1], "composition": "blend"}]}"#,
            r#"{"cases": [{"name": "a", "input_ids": [1], "adapter": []}]}"#,
        ] {
            assert!(RequestFile::from_json(bad).is_err(), "{bad}");
        }
    }
}
