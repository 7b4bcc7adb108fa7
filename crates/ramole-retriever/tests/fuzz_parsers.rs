//! Time-bounded fuzzing of the retriever's parsers of untrusted bytes (`$RAMOLE_FUZZ_SECS` per target,
//! default 2 s): the pool entry parser and the JSONL samples reader. A panic fails the test; every
//! input must either be refused with an error or parse into something that satisfies the parser's
//! own contract.

use std::path::Path;

use ramole_retriever::{LoraPool, PoolEntry, parse_jsonl_texts, read_jsonl_texts};

/// Entry files written by the pool itself: with and without samples and adapter.
fn entry_seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut pool, _) = LoraPool::create(dir.path()).expect("create");
    let mut plain = PoolEntry::new("plain", vec![0.25, -1.5, 3.0, 1e-20], 3);
    plain.samples = vec!["What is 2 plus 2?".into(), "naïve — ünïcode \"quoted\"\n".into(), String::new()];
    pool.add_embedding(plain).expect("add");
    let mut with_adapter = PoolEntry::new("adapter", vec![1.0, 0.0, 0.0, 0.0], 1);
    with_adapter.adapter =
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama/adapters/a0"));
    pool.add_embedding(with_adapter).expect("add");
    ["plain", "adapter"]
        .iter()
        .map(|n| std::fs::read(dir.path().join("entries").join(format!("{n}.json"))).expect("read entry"))
        .collect()
}

#[test]
fn fuzz_pool_entry_parser() {
    let seeds = entry_seeds();
    // The seeds carry their own names; the file name is part of the check, so try each under its name.
    ramole_testkit::fuzz("pool entry", &seeds, |bytes| {
        ["plain", "adapter"].iter().any(|name| {
            let path = Path::new("entries").join(format!("{name}.json"));
            match PoolEntry::from_json(&path, bytes) {
                Ok(entry) => {
                    // What an accepted entry promises to the index.
                    assert_eq!(&entry.name, name);
                    assert!(!entry.embedding.is_empty() && entry.embedding.iter().all(|x| x.is_finite()));
                    assert!(entry.embedding.iter().any(|x| *x != 0.0));
                    assert!(entry.n_samples >= 1);
                    true
                }
                Err(e) => {
                    assert!(e.to_string().contains(&format!("{name}.json")), "the error names the file: {e}");
                    false
                }
            }
        })
    });
}

#[test]
fn fuzz_pool_open_on_mutated_entries_never_fails_the_pool() {
    // The same mutations, through the real reader: `open` must always succeed, skipping what is bad.
    let seeds = entry_seeds();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut pool, _) = LoraPool::create(dir.path()).expect("create");
    pool.add_embedding(PoolEntry::new("keeper", vec![0.0, 1.0, 0.0, 0.0], 1)).expect("add");
    let target = dir.path().join("entries/plain.json");
    ramole_testkit::fuzz("pool open", &seeds[..1], |bytes| {
        std::fs::write(&target, bytes).expect("write");
        let (pool, skipped) = LoraPool::open(dir.path()).expect("a bad entry never fails the pool");
        assert!(pool.get("keeper").is_some(), "a bad entry hid a good one");
        assert_eq!(pool.len() + skipped.len(), 2);
        pool.get("plain").is_some()
    });
}

const JSONL_SEEDS: [&str; 4] = [
    "\"plain text\"\n{\"input\": \"from an object\", \"target\": \"x\"}\n",
    "\u{feff}\"after a byte-order mark\"\r\n\r\n{\"input\": \"crlf\"}\r\n",
    "{\"input\": \"unicode ünïcode 😀 \\u00e9 \\\"escaped\\\"\", \"choices\": [\"a\", \"b\"]}\n   \n\"\"\n",
    "\"one line without a newline at the end\"",
];

#[test]
fn fuzz_jsonl_samples_reader() {
    let seeds: Vec<Vec<u8>> = JSONL_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let path = Path::new("samples.jsonl");
    ramole_testkit::fuzz("jsonl samples", &seeds, |bytes| {
        // Bytes that are not UTF-8 are refused by `read_text` before parsing (tested below).
        let Ok(text) = std::str::from_utf8(bytes) else { return false };
        match parse_jsonl_texts(path, text) {
            Ok(texts) => {
                let body = text.strip_prefix('\u{feff}').unwrap_or(text);
                let lines = body.lines().filter(|l| !l.trim().is_empty()).count();
                assert_eq!(texts.len(), lines, "one text per non-blank line");
                assert!(!texts.is_empty());
                true
            }
            Err(e) => {
                assert!(e.to_string().starts_with("samples.jsonl"), "the error names the file: {e}");
                false
            }
        }
    });
}

#[test]
fn fuzz_jsonl_samples_file_reader() {
    // Through the file reader (UTF-8 check, byte-order mark).
    let seeds: Vec<Vec<u8>> = JSONL_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("samples.jsonl");
    ramole_testkit::fuzz("jsonl samples file", &seeds, |bytes| {
        std::fs::write(&path, bytes).expect("write");
        let from_file = read_jsonl_texts(&path);
        if let Ok(text) = std::str::from_utf8(bytes) {
            // `read_text` drops one byte-order mark before parsing.
            let parsed = parse_jsonl_texts(&path, text.strip_prefix('\u{feff}').unwrap_or(text));
            assert_eq!(from_file.as_ref().ok(), parsed.as_ref().ok(), "file and text readers agree");
        } else {
            assert!(from_file.is_err(), "non-UTF-8 bytes are refused");
        }
        from_file.is_ok()
    });
}
