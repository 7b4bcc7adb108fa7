//! Fuzzing of request files (issue 6): the parser, and the engine behind it, take any bytes without
//! panicking. Seeds: the tiny-llama fixture's `cases.json` and the README's example. The time per
//! target is `$RAMOLE_FUZZ_SECS` (default 2 s).

mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use ramole_batch::{BatchError, Engine, RequestFile, RunOptions};
use ramole_core::backend::{Selected, device};

/// The request-file example of the repository's README (its first ```json block).
fn readme_example() -> Vec<u8> {
    let readme = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md");
    let start = text.find("```json\n").expect("a ```json block in the README") + "```json\n".len();
    let end = start + text[start..].find("```").expect("closed block");
    text.as_bytes()[start..end].to_vec()
}

fn seeds() -> Vec<Vec<u8>> {
    let cases = std::fs::read(common::fixture("tiny-llama").join("cases.json")).expect("cases.json");
    vec![cases, readme_example()]
}

fn parse(bytes: &[u8]) -> Option<RequestFile> {
    let text = std::str::from_utf8(bytes).ok()?;
    match RequestFile::from_json(text) {
        Ok(file) => Some(file),
        Err(e) => {
            assert!(matches!(e, BatchError::InvalidRequests { .. }), "typed error: {e}");
            None
        }
    }
}

#[test]
fn request_file_parser_never_panics() {
    let report = ramole_testkit::fuzz("request_file", &seeds(), |bytes| {
        let Some(file) = parse(bytes) else { return false };
        // What is accepted is usable: at least one request, names non-empty and unique.
        assert!(!file.requests.is_empty());
        let names: HashSet<&str> = file.requests.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), file.requests.len());
        assert!(!names.contains(""));
        true
    });
    assert!(report.accepted > 2, "mutations get past the parser too: {report:?}");
}

#[test]
fn request_files_through_the_engine_never_panic() {
    let fixture = common::fixture("tiny-llama");
    let mut engine = Engine::<Selected>::load(fixture.join("base"), &device()).expect("tiny llama");
    engine.adapters_mut().load_dir(fixture.join("adapters")).expect("adapters");
    let ctx = engine.config().max_position_embeddings;
    let vocab = engine.config().vocab_size;
    ramole_testkit::fuzz("request_file_engine", &seeds(), |bytes| {
        let Some(mut file) = parse(bytes) else { return false };
        // Keep each run short: budgets that fit the context are cut to 4 tokens (those that do not
        // are kept, to be refused).
        for r in &mut file.requests {
            if r.max_new_tokens <= ctx {
                r.max_new_tokens = r.max_new_tokens.min(4);
            }
        }
        let results = engine.run(&file.requests, RunOptions { prompt_logits: true, ..Default::default() });
        assert_eq!(results.len(), file.requests.len());
        for (req, res) in file.requests.iter().zip(results) {
            match res {
                Ok(out) => {
                    assert_eq!(out.name, req.name);
                    assert!(out.new_tokens.len() <= req.max_new_tokens);
                    let logits = out.prompt_logits.expect("asked for");
                    assert_eq!(logits.len(), out.prompt_ids.len() * vocab);
                    assert!(logits.iter().all(|v| v.is_finite()), "{}", req.name);
                }
                Err(e) => assert!(e.to_string().contains(&format!("`{}`", req.name)), "names the request: {e}"),
            }
        }
        true
    });
}
