//! `ramole pool` and `ramole retrieve` on pools with bad entries, missing pools and inputs that are not
//! regular files. No model is needed: entries are written through the library by embedding, and every
//! command here stops before an encoder would be loaded.

mod common;

use std::path::Path;
use std::process::Output;

use common::{s, stderr};

use ramole_retriever::{LoraPool, PoolEntry};

/// Runs the binary with a private `$RAMOLE_HOME` (and under `timeout`, see [`common::run_in`]).
fn ramole(args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    common::run_in(Some(home.path()), args)
}

fn ok(args: &[&str]) -> Output {
    let out = ramole(args);
    assert!(out.status.success(), "ramole {args:?} failed: {}", stderr(&out));
    out
}

fn failed(args: &[&str], words: &str) -> String {
    let err = common::clean_failure(args, &ramole(args));
    assert!(err.contains(words), "ramole {args:?}: expected {words:?} in {err}");
    err
}

fn listed(pool: &Path) -> (Vec<String>, String) {
    let out = ok(&["pool", "--pool", s(pool), "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    let names = rows.as_array().expect("array").iter().map(|r| r["name"].as_str().expect("name").to_owned()).collect();
    (names, stderr(&out))
}

fn two_lora_pool(dir: &Path) {
    let (mut pool, _) = LoraPool::create(dir).expect("create");
    pool.add_embedding(PoolEntry::new("math", vec![1.0, 0.0, 0.0], 3)).expect("add");
    pool.add_embedding(PoolEntry::new("movies", vec![0.0, 1.0, 0.0], 2)).expect("add");
}

#[test]
fn reading_a_missing_pool_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("typo");
    for args in [
        vec!["pool", "--pool", s(&typo), "list"],
        vec!["pool", "--pool", s(&typo), "list", "--json"],
        vec!["pool", "--pool", s(&typo), "remove", "math"],
        vec!["pool", "--pool", s(&typo), "reembed"],
        vec!["retrieve", "--pool", s(&typo), "What is 2 plus 2?"],
    ] {
        failed(&args, "does not exist");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // `pool add` with a bad samples file fails before creating anything either.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").expect("w");
    failed(&["pool", "--pool", s(&typo), "add", "x", "--samples", s(&empty)], "no samples");
    assert!(!typo.exists());
}

#[test]
fn a_bad_entry_is_skipped_with_a_warning_and_can_be_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    two_lora_pool(&pool);
    std::fs::write(pool.join("entries/broken.json"), "{ not json").expect("w");
    // A valid entry whose name differs from its file name, one of another dimension, one with a NaN.
    let math = std::fs::read_to_string(pool.join("entries/math.json")).expect("read");
    std::fs::write(pool.join("entries/copy.json"), &math).expect("w");
    let mut odd: serde_json::Value = serde_json::from_str(&math).expect("json");
    odd["name"] = "odd".into();
    odd["dim"] = 2.into();
    odd["embedding_f32le_hex"] = "0000803f00000000".into();
    std::fs::write(pool.join("entries/odd.json"), odd.to_string()).expect("w");
    let mut nan: serde_json::Value = serde_json::from_str(&math).expect("json");
    nan["name"] = "nan".into();
    nan["embedding_f32le_hex"] = "0000c07f0000803f00000000".into();
    std::fs::write(pool.join("entries/nan.json"), nan.to_string()).expect("w");

    let (names, warnings) = listed(&pool);
    assert_eq!(names, ["math", "movies"], "the good entries are listed");
    for (file, why) in [
        ("broken.json", "not a pool entry"),
        ("copy.json", "named `math`"),
        ("odd.json", "2 dimensions"),
        ("nan.json", "not finite"),
    ] {
        let line = warnings.lines().find(|l| l.contains(file)).unwrap_or_else(|| panic!("no warning for {file}"));
        assert!(line.starts_with("warning: skipping pool entry") && line.contains(why), "{line}");
    }
    let text = ok(&["pool", "--pool", s(&pool), "list"]);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("2 LoRAs in"));

    // Every bad entry can be removed by its file name; the good ones stay.
    for name in ["broken", "copy", "odd", "nan"] {
        ok(&["pool", "--pool", s(&pool), "remove", name]);
        assert!(!pool.join(format!("entries/{name}.json")).exists(), "{name} not removed");
    }
    let (names, warnings) = listed(&pool);
    assert_eq!(names, ["math", "movies"]);
    assert!(!warnings.contains("warning"), "{warnings}");
    failed(&["pool", "--pool", s(&pool), "remove", "broken"], "no LoRA named `broken`");
}

#[cfg(unix)]
#[test]
fn entries_and_inputs_that_are_not_regular_files_do_not_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    two_lora_pool(&pool);
    let fifo = dir.path().join("fifo.jsonl");
    let entry_fifo = pool.join("entries/fifo.json");
    for p in [&fifo, &entry_fifo] {
        let made = std::process::Command::new("mkfifo").arg(p).status().expect("mkfifo");
        assert!(made.success(), "mkfifo {}", p.display());
    }
    std::os::unix::fs::symlink("/dev/zero", pool.join("entries/zero.json")).expect("symlink");
    let zero = dir.path().join("zero.jsonl");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");

    let (names, warnings) = listed(&pool);
    assert_eq!(names, ["math", "movies"]);
    assert!(warnings.contains("fifo.json") && warnings.contains("FIFO"), "{warnings}");
    assert!(warnings.contains("zero.json") && warnings.contains("character device"), "{warnings}");

    failed(&["pool", "--pool", s(&pool), "add", "x", "--samples", s(&fifo)], "FIFO");
    failed(&["pool", "--pool", s(&pool), "add", "x", "--samples", s(&zero)], "character device");
    failed(&["retrieve", "--pool", s(&pool), "--input", s(&fifo)], "FIFO");
    failed(&["retrieve", "--pool", s(&pool), "--input", s(&zero)], "character device");

    ok(&["pool", "--pool", s(&pool), "remove", "fifo"]);
    ok(&["pool", "--pool", s(&pool), "remove", "zero"]);
    assert!(Path::new("/dev/zero").exists(), "the link was removed, not its target");
    let (names, warnings) = listed(&pool);
    assert_eq!(names, ["math", "movies"]);
    assert!(!warnings.contains("warning"), "{warnings}");
}

#[test]
fn a_samples_file_with_a_byte_order_mark_is_read_and_bad_lines_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    two_lora_pool(&pool);
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "\u{feff}\"fine\"\n{\"input\": 3}\n").expect("w");
    // The BOM line parses; the error is on line 2 and names the file.
    let err = failed(&["retrieve", "--pool", s(&pool), "--input", s(&bad)], ":2:");
    assert!(err.contains("bad.jsonl"), "{err}");
    let err = failed(&["pool", "--pool", s(&pool), "add", "x", "--samples", s(&bad)], ":2:");
    assert!(err.contains("bad.jsonl"), "{err}");
}

#[test]
fn list_shows_the_recorded_encoder_or_that_there_is_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    two_lora_pool(&pool);
    let out = ok(&["pool", "--pool", s(&pool), "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("encoder: unrecorded"), "{}", stderr(&out));
    std::fs::write(pool.join("pool.json"), r#"{"format": "ramole-pool/1", "encoder": "0123abcd"}"#).expect("w");
    let out = ok(&["pool", "--pool", s(&pool), "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("encoder: 0123abcd"));
    let out = ok(&["pool", "--pool", s(&pool), "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["encoder"], "0123abcd");
}
