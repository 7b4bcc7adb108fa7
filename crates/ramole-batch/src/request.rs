//! Request files: the format of `tests/data/fixtures/tiny-llama/cases.json`.

use std::path::Path;

use ramole_core::lora::{ArrowParams, Composition};
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
    composition: CompositionName,
    /// Arrow's settings, with `"composition": "arrow"` (PEFT's defaults when absent).
    #[serde(default)]
    arrow: Option<ArrowParams>,
    #[serde(default)]
    greedy_new_tokens: Option<usize>,
}

/// `composition` as request files spell it.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum CompositionName {
    #[default]
    Single,
    Mixture,
    Fusion,
    Arrow,
    Gate,
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
    /// Reads a request file (a regular UTF-8 file of at most [`ramole_core::fs::MAX_TEXT_BYTES`]; a
    /// byte-order mark is dropped). Fails on what [`RequestFile::from_json`] refuses, with the path;
    /// other checks (empty prompt, context length, adapters) happen per request when the batch runs.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BatchError> {
        let path = path.as_ref();
        let text = ramole_core::fs::read_text(path, ramole_core::fs::MAX_TEXT_BYTES)
            .map_err(|source| BatchError::Io { path: path.into(), source })?;
        Self::from_json(&text).map_err(|e| BatchError::RequestFile { path: path.into(), message: e.to_string() })
    }

    /// Parses the JSON text of a request file. Fails with [`BatchError::InvalidRequests`] on invalid
    /// JSON, no cases, a case with an empty name or with neither `input_ids` nor `prompt`, negative or
    /// oversized token ids, or duplicate names.
    pub fn from_json(text: &str) -> Result<Self, BatchError> {
        let invalid = |request: Option<&str>, message: String| BatchError::InvalidRequests {
            request: request.map(String::from),
            message,
        };
        let raw: RawFile =
            serde_json::from_str(text).map_err(|e| invalid(None, format!("not a valid request file: {e}")))?;
        if raw.cases.is_empty() {
            return Err(invalid(None, "`cases` is empty: no request to run".into()));
        }
        let mut names = std::collections::HashSet::with_capacity(raw.cases.len());
        let mut requests = Vec::with_capacity(raw.cases.len());
        for case in raw.cases {
            if case.name.is_empty() {
                return Err(invalid(None, format!("case {} has an empty `name`", requests.len())));
            }
            if !names.insert(case.name.clone()) {
                return Err(invalid(None, format!("duplicate request name `{}`", case.name)));
            }
            let input = match (case.input_ids, case.prompt) {
                (Some(ids), _) => RequestInput::Ids(
                    ids.iter()
                        .map(|&t| u32::try_from(t))
                        .collect::<Result<_, _>>()
                        .map_err(|_| invalid(Some(&case.name), "token ids must be in 0..2^32".into()))?,
                ),
                (None, Some(p)) => RequestInput::Prompt(p),
                (None, None) => return Err(invalid(Some(&case.name), "needs `input_ids` or `prompt`".into())),
            };
            let composition = match (case.composition, case.arrow) {
                (CompositionName::Arrow, arrow) => {
                    let params = arrow.unwrap_or_default();
                    params.validate().map_err(|m| invalid(Some(&case.name), m))?;
                    Composition::Arrow(params)
                }
                (_, Some(_)) => {
                    return Err(invalid(Some(&case.name), "`arrow` settings need `\"composition\": \"arrow\"`".into()));
                }
                (CompositionName::Single, None) => Composition::Single,
                (CompositionName::Mixture, None) => Composition::Mixture,
                (CompositionName::Fusion, None) => Composition::Fusion,
                (CompositionName::Gate, None) => Composition::Gate,
            };
            requests.push(Request {
                name: case.name,
                input,
                row: RowRequest { adapters: case.adapters, composition },
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
    fn parses_arrow_rows() {
        let f = RequestFile::from_json(
            r#"{"cases": [
                {"name": "a", "input_ids": [1], "adapters": [["x", 1.0], ["y", 1.0]], "composition": "arrow",
                 "arrow": {"top_k": 2, "temperature": 0.5}},
                {"name": "b", "input_ids": [1], "adapters": [["x", 1.0]], "composition": "arrow"}]}"#,
        )
        .expect("valid");
        assert_eq!(f.requests[0].row.composition, Composition::Arrow(ArrowParams { top_k: 2, temperature: 0.5 }));
        assert_eq!(f.requests[1].row.composition, Composition::Arrow(ArrowParams::default()));
        for (bad, says) in [
            (r#""composition": "arrow", "arrow": {"top_k": 0}"#, "top_k"),
            (r#""composition": "arrow", "arrow": {"temperature": 0}"#, "temperature"),
            (r#""composition": "arrow", "arrow": {"temperature": -1}"#, "temperature"),
            (r#""composition": "mixture", "arrow": {"top_k": 2}"#, "arrow"),
            (r#""composition": "arrow", "arrow": {"k": 2}"#, "unknown field"),
        ] {
            let text = format!(r#"{{"cases": [{{"name": "r", "input_ids": [1], "adapters": [["x", 1.0]], {bad}}}]}}"#);
            let err = RequestFile::from_json(&text).expect_err(bad);
            assert!(
                matches!(err, BatchError::InvalidRequests { .. }) && err.to_string().contains(says),
                "{bad}: {err}"
            );
        }
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
            r#"{"cases": []}"#,
            r#"{"cases": [{"name": "", "input_ids": [1]}]}"#,
            r#"{"cases": [{"name": "a", "input_ids": [1], "greedy_new_tokens": -1}]}"#,
            r#"{"cases": [{"name": "a", "input_ids": [1], "greedy_new_tokens": 18446744073709551616}]}"#,
            "[]",
            "",
        ] {
            let err = RequestFile::from_json(bad).expect_err(bad);
            assert!(matches!(err, BatchError::InvalidRequests { .. }), "{bad}: {err}");
        }
        let err = RequestFile::from_json(r#"{"cases": [{"name": "x"}]}"#).expect_err("no input");
        assert!(
            matches!(&err, BatchError::InvalidRequests { request: Some(r), .. } if r == "x"),
            "the error names the case: {err}"
        );
        assert_eq!(err.to_string(), "request `x`: needs `input_ids` or `prompt`");
    }
}
