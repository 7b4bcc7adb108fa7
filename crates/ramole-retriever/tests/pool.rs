//! Pool invariants and bad inputs (no model needed: entries are added by embedding).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use ramole_retriever::pool::{MAX_NAME_LEN, validate_adapter};
use ramole_retriever::{Index, LoraPool, PoolEntry, RetrieverError, read_jsonl_texts};

fn adapter_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama/adapters/a0")
}

fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..dim)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Everything a reader can observe of a pool folder: file names and contents.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir.join("entries")).expect("read_dir") {
        let p = e.expect("entry").path();
        out.insert(p.file_name().expect("name").to_string_lossy().into_owned(), std::fs::read(&p).expect("read"));
    }
    out
}

/// Opens an existing pool, which must have no bad entry.
fn open(dir: &Path) -> LoraPool {
    let (pool, skipped) = LoraPool::open(dir).expect("open");
    assert!(skipped.is_empty(), "{skipped:?}");
    pool
}

/// Opens a pool, creating it if needed.
fn create(dir: &Path) -> LoraPool {
    let (pool, skipped) = LoraPool::create(dir).expect("create");
    assert!(skipped.is_empty(), "{skipped:?}");
    pool
}

fn pool_with_two(dir: &Path) -> LoraPool {
    let mut pool = create(dir);
    pool.add_embedding(PoolEntry::new("alpha", vector(1, 8), 20)).expect("add alpha");
    let mut with_adapter = PoolEntry::new("beta", vector(2, 8), 3);
    with_adapter.adapter = Some(adapter_fixture());
    pool.add_embedding(with_adapter).expect("add beta");
    pool
}

/// Runs `op` on the pool and checks it fails with the expected error, leaving disk and memory unchanged.
fn assert_refused(
    pool: &mut LoraPool,
    op: impl FnOnce(&mut LoraPool) -> Result<(), RetrieverError>,
    expected: impl Fn(&RetrieverError) -> bool,
) {
    let (before_disk, before_index) = (snapshot(pool.dir()), pool.index().clone());
    let err = op(pool).expect_err("operation must be refused");
    assert!(expected(&err), "unexpected error: {err}");
    assert_eq!(snapshot(pool.dir()), before_disk, "pool files changed after {err}");
    assert_eq!(pool.index(), &before_index, "index changed after {err}");
    assert_eq!(open(pool.dir()).index(), &before_index);
}

#[test]
fn add_list_remove_round_trip_through_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pool = pool_with_two(dir.path());
    let reopened = open(dir.path());
    assert_eq!(reopened.entries(), pool.entries());
    let beta = reopened.get("beta").expect("beta");
    assert_eq!(beta.adapter.as_deref(), Some(std::fs::canonicalize(adapter_fixture()).expect("canon").as_path()));
    assert_eq!(beta.n_samples, 3);
    assert_eq!(beta.embedding, vector(2, 8), "embedding must read back bit for bit");

    pool.remove("alpha").expect("remove");
    assert_eq!(pool.len(), 1);
    assert!(!dir.path().join("entries/alpha.json").exists());
    let reopened = open(dir.path());
    assert_eq!(reopened.index(), pool.index());
    assert_eq!(reopened.entries().iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["beta"]);
}

#[test]
fn unsafe_names_are_refused_and_the_pool_is_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pool = pool_with_two(dir.path());
    let long = "x".repeat(MAX_NAME_LEN + 1);
    for bad in ["../x", "", long.as_str(), "a/b", ".hidden", "a b", "..", "x\0y"] {
        assert_refused(
            &mut pool,
            |p| p.add_embedding(PoolEntry::new(bad, vector(3, 8), 1)),
            |e| matches!(e, RetrieverError::InvalidName { name, .. } if name == bad),
        );
        assert_refused(&mut pool, |p| p.remove(bad), |e| matches!(e, RetrieverError::InvalidName { .. }));
    }
    assert!(!dir.path().join("x.json").exists(), "`../x` escaped the entries folder");
}

#[test]
fn duplicate_unknown_and_bad_vectors_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pool = pool_with_two(dir.path());
    assert_refused(
        &mut pool,
        |p| p.add_embedding(PoolEntry::new("alpha", vector(9, 8), 1)),
        |e| matches!(e, RetrieverError::DuplicateName { name, .. } if name == "alpha"),
    );
    assert_refused(&mut pool, |p| p.remove("gamma"), |e| matches!(e, RetrieverError::UnknownName { .. }));
    assert_refused(
        &mut pool,
        |p| p.add_embedding(PoolEntry::new("gamma", vector(9, 7), 1)),
        |e| matches!(e, RetrieverError::Dimension { expected: 8, got: 7, .. }),
    );
    assert_refused(
        &mut pool,
        |p| p.add_embedding(PoolEntry::new("gamma", vec![0.0; 8], 1)),
        |e| matches!(e, RetrieverError::BadVector { .. }),
    );
    assert_refused(
        &mut pool,
        |p| p.add_embedding(PoolEntry::new("gamma", vector(9, 8), 0)),
        |e| matches!(e, RetrieverError::EmptySamples { .. }),
    );
    // A second handle on the same folder that did not see `alpha` being added still cannot clobber it.
    let fresh = tempfile::tempdir().expect("tempdir");
    let mut stale = create(fresh.path());
    let mut other = open(fresh.path());
    other.add_embedding(PoolEntry::new("alpha", vector(1, 8), 1)).expect("add");
    let err = stale.add_embedding(PoolEntry::new("alpha", vector(5, 8), 1)).expect_err("clobber");
    assert!(matches!(err, RetrieverError::DuplicateName { .. }));
    assert_eq!(open(fresh.path()).get("alpha").expect("alpha").embedding, vector(1, 8));
}

/// Copies the fixture adapter, then breaks it with `damage`.
fn broken_adapter(damage: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter_fixture().join(f), dir.path().join(f)).expect("copy");
    }
    damage(dir.path());
    dir
}

#[test]
fn unreadable_adapters_are_typed_errors() {
    validate_adapter(&adapter_fixture()).expect("the fixture adapter is valid");
    let cases: Vec<(&str, tempfile::TempDir)> = vec![
        ("no config", broken_adapter(|d| std::fs::remove_file(d.join("adapter_config.json")).expect("rm"))),
        ("bad config", broken_adapter(|d| std::fs::write(d.join("adapter_config.json"), "{not json").expect("w"))),
        (
            "no rank",
            broken_adapter(|d| std::fs::write(d.join("adapter_config.json"), "{\"peft_type\":\"LORA\"}").expect("w")),
        ),
        ("no weights", broken_adapter(|d| std::fs::remove_file(d.join("adapter_model.safetensors")).expect("rm"))),
        (
            "truncated weights",
            broken_adapter(|d| {
                let p = d.join("adapter_model.safetensors");
                let bytes = std::fs::read(&p).expect("read");
                std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
            }),
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pool = pool_with_two(dir.path());
    for (what, adapter) in &cases {
        let mut entry = PoolEntry::new("gamma", vector(4, 8), 1);
        entry.adapter = Some(adapter.path().to_path_buf());
        assert_refused(
            &mut pool,
            |p| p.add_embedding(entry),
            |e| matches!(e, RetrieverError::Adapter { path, .. } if path == adapter.path()),
        );
        assert!(validate_adapter(adapter.path()).is_err(), "{what} accepted");
    }
    let mut entry = PoolEntry::new("gamma", vector(4, 8), 1);
    entry.adapter = Some(dir.path().join("does-not-exist"));
    assert_refused(&mut pool, |p| p.add_embedding(entry), |e| matches!(e, RetrieverError::Adapter { .. }));
}

#[test]
fn samples_files_accept_strings_and_objects_and_refuse_empty_or_bad_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, "\"plain text\"\n\n{\"input\": \"from an object\", \"target\": \"x\"}\n").expect("w");
    assert_eq!(read_jsonl_texts(&good).expect("read"), ["plain text", "from an object"]);

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n  \n").expect("w");
    assert!(matches!(read_jsonl_texts(&empty), Err(RetrieverError::EmptySamples { path }) if path == empty));

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "\"ok\"\n{\"target\": 1}\n").expect("w");
    assert!(matches!(read_jsonl_texts(&bad), Err(RetrieverError::JsonlLine { line: 2, .. })));
    std::fs::write(&bad, "\"ok\"\n[1, 2]\n").expect("w");
    assert!(matches!(read_jsonl_texts(&bad), Err(RetrieverError::JsonlLine { line: 2, .. })));
    let missing = dir.path().join("missing.jsonl");
    assert!(matches!(read_jsonl_texts(&missing), Err(RetrieverError::Io { .. })));

    // A UTF-8 byte-order mark (as some editors write) is dropped; a bad later line names file and line.
    let bom = dir.path().join("bom.jsonl");
    std::fs::write(&bom, "\u{feff}\"first\"\r\n{\"input\": \"second\"}\r\n").expect("w");
    assert_eq!(read_jsonl_texts(&bom).expect("BOM file"), ["first", "second"]);
    std::fs::write(&bom, "\u{feff}\"first\"\n\n{\"input\": 3}\n").expect("w");
    let err = read_jsonl_texts(&bom).expect_err("bad line 3");
    assert!(matches!(&err, RetrieverError::JsonlLine { line: 3, path, .. } if path == &bom), "{err}");
    assert!(err.to_string().starts_with(&format!("{}:3:", bom.display())), "{err}");
}

#[test]
fn a_crash_mid_write_leaves_the_previous_pool_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool_with_two(dir.path());
    // What a writer killed before its rename/link leaves behind: a partial temporary file.
    std::fs::write(dir.path().join("entries/.gamma.json.tmp-999-0"), "{\"format\": \"ramole-pool-en").expect("w");
    let reopened = open(dir.path());
    assert_eq!(reopened.index(), pool.index());
    assert!(reopened.get("gamma").is_none());
    // A corrupt *published* entry is reported, naming its file (never silently dropped), and the
    // others still load.
    std::fs::write(dir.path().join("entries/delta.json"), "{").expect("w");
    let (reopened, skipped) = LoraPool::open(dir.path()).expect("a corrupt entry is skipped");
    assert_eq!(reopened.index(), pool.index());
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].name, "delta");
    let err = &skipped[0].error;
    assert!(matches!(err, RetrieverError::Format { path, .. } if path.ends_with("delta.json")), "{err}");
}

/// Writes `entries/<file>.json` of the pool in `dir` with `text`.
fn put_entry(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join("entries").join(format!("{file}.json")), text).expect("write entry");
}

/// A valid entry file's JSON, as the pool writes it, with `edit` applied to its object.
fn entry_json(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let text = std::fs::read_to_string(dir.join("entries").join(format!("{name}.json"))).expect("read entry");
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("entry json");
    edit(&mut value);
    value.to_string()
}

fn hex(v: &[f32]) -> String {
    v.iter().flat_map(|x| x.to_le_bytes()).map(|b| format!("{b:02x}")).collect()
}

#[test]
fn bad_entries_are_skipped_with_reasons_and_can_be_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pool = pool_with_two(dir.path());
    pool.add_embedding(PoolEntry::new("gamma", vector(3, 8), 2)).expect("add gamma");
    let good = pool.index().clone();
    let d = dir.path();
    // (file name, content, words the reason must hold)
    let cases: Vec<(&str, String, &str)> = vec![
        ("a-not-json", "{".into(), "not a pool entry"),
        ("b-empty", String::new(), "not a pool entry"),
        ("c-renamed", entry_json(d, "alpha", |_| {}), "named `alpha` but its file is named `c-renamed.json`"),
        ("d-format", entry_json(d, "alpha", |v| v["format"] = "other/9".into()), "format"),
        (
            "e-nan",
            entry_json(d, "alpha", |v| {
                v["name"] = "e-nan".into();
                v["embedding_f32le_hex"] = hex(&[1.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).into();
            }),
            "not finite",
        ),
        (
            "f-inf",
            entry_json(d, "alpha", |v| {
                v["name"] = "f-inf".into();
                v["embedding_f32le_hex"] = hex(&[f32::INFINITY; 8]).into();
            }),
            "not finite",
        ),
        (
            "g-zero",
            entry_json(d, "alpha", |v| {
                v["name"] = "g-zero".into();
                v["embedding_f32le_hex"] = hex(&[0.0; 8]).into();
            }),
            "zero",
        ),
        (
            "h-dim",
            entry_json(d, "alpha", |v| {
                v["name"] = "h-dim".into();
                v["dim"] = 7.into();
                v["embedding_f32le_hex"] = hex(&vector(4, 7)).into();
            }),
            "7 dimensions, the pool's other entries have 8",
        ),
        (
            "i-dim-field",
            entry_json(d, "alpha", |v| {
                v["name"] = "i-dim-field".into();
                v["dim"] = 9.into();
            }),
            "hex digits",
        ),
        (
            "j-no-samples",
            entry_json(d, "alpha", |v| {
                v["name"] = "j-no-samples".into();
                v["n_samples"] = 0.into();
            }),
            "n_samples is 0",
        ),
        ("k-binary", "\u{0}\u{1}\u{2}".into(), "not a pool entry"),
    ];
    for (file, text, _) in &cases {
        put_entry(d, file, text);
    }
    let (reopened, skipped) = LoraPool::open(d).expect("open skips bad entries");
    assert_eq!(reopened.index(), &good, "the good entries all load");
    let names: Vec<&str> = skipped.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, cases.iter().map(|c| c.0).collect::<Vec<_>>());
    for (s, (file, _, reason)) in skipped.iter().zip(&cases) {
        let message = s.to_string();
        assert!(message.contains(&format!("{file}.json")) && message.contains(reason), "{file}: {message}");
    }
    // Listing and searching keep working; every bad entry can be removed by name.
    assert_eq!(reopened.index().search(&[vector(1, 8)], 1).expect("search")[0][0].0, "alpha");
    let mut reopened = reopened;
    for (file, _, _) in &cases {
        reopened.remove(file).unwrap_or_else(|e| panic!("remove {file}: {e}"));
        assert!(!d.join("entries").join(format!("{file}.json")).exists());
    }
    assert_eq!(reopened.index(), &good);
    let (_, skipped) = LoraPool::open(d).expect("open");
    assert!(skipped.is_empty(), "{skipped:?}");
    // Removing a name that is neither loaded nor on disk is still an error.
    assert!(matches!(reopened.remove("a-not-json"), Err(RetrieverError::UnknownName { .. })));
}

#[test]
fn the_pool_dimension_is_the_majority_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pool = create(dir.path());
    // `a-odd` sorts first: it must not decide the dimension for the two others.
    for (name, dim) in [("b", 8), ("c", 8)] {
        pool.add_embedding(PoolEntry::new(name, vector(1, dim), 1)).expect("add");
    }
    let odd_dir = tempfile::tempdir().expect("tempdir");
    let mut odd = create(odd_dir.path());
    odd.add_embedding(PoolEntry::new("a-odd", vector(2, 4), 1)).expect("add");
    std::fs::copy(odd.dir().join("entries/a-odd.json"), dir.path().join("entries/a-odd.json")).expect("copy");
    let (reopened, skipped) = LoraPool::open(dir.path()).expect("open");
    assert_eq!(reopened.index().dim(), 8);
    assert_eq!(reopened.len(), 2);
    assert_eq!(skipped.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a-odd"]);
    // Adding keeps to the pool's dimension.
    let mut reopened = reopened;
    let err = reopened.add_embedding(PoolEntry::new("d", vector(3, 4), 1)).expect_err("wrong dim");
    assert!(matches!(err, RetrieverError::Dimension { expected: 8, got: 4, .. }), "{err}");
}

#[test]
fn opening_a_missing_pool_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("typo");
    let err = LoraPool::open(&missing).expect_err("no pool");
    assert!(matches!(&err, RetrieverError::NoPool { dir } if dir == &missing), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!missing.exists(), "opening for reading created {}", missing.display());
    // A folder without `entries/` is not a pool either, and stays untouched.
    let err = LoraPool::open(dir.path()).expect_err("not a pool");
    assert!(matches!(err, RetrieverError::NoPool { .. }), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    // `create` makes it; then `open` works.
    let (pool, _) = LoraPool::create(&missing).expect("create");
    assert!(pool.is_empty() && missing.join("entries").is_dir());
    assert!(open(&missing).is_empty());
}

#[cfg(unix)]
#[test]
fn entries_and_samples_that_are_not_regular_files_do_not_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool_with_two(dir.path());
    let entries = dir.path().join("entries");
    std::os::unix::fs::symlink("/dev/zero", entries.join("zero.json")).expect("symlink");
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.jsonl")).expect("symlink");
    let fifo_entry = entries.join("fifo.json");
    let fifo_samples = dir.path().join("fifo.jsonl");
    let have_fifo = [&fifo_entry, &fifo_samples]
        .iter()
        .all(|p| std::process::Command::new("mkfifo").arg(p).status().is_ok_and(|s| s.success()));
    // Run in a thread with a deadline: a blocking open would otherwise hang the test run.
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opened = LoraPool::open(&path)
            .map(|(p, s)| (p.len(), s.iter().map(|s| (s.name.clone(), s.to_string())).collect::<Vec<_>>()));
        let samples: Vec<_> =
            ["zero.jsonl", "fifo.jsonl"].iter().map(|f| read_jsonl_texts(&path.join(f)).map(|_| ())).collect();
        let _ = tx.send((opened, samples));
    });
    let (opened, samples) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("reading must not block");
    let (len, skipped) = opened.expect("open");
    assert_eq!(len, pool.len());
    let mut want = vec!["zero"];
    if have_fifo {
        want.insert(0, "fifo");
    }
    assert_eq!(skipped.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), want);
    assert!(skipped.iter().all(|s| s.1.contains("not a regular file")), "{skipped:?}");
    let zero = samples[0].as_ref().expect_err("device");
    assert!(matches!(zero, RetrieverError::Io { path, .. } if path.ends_with("zero.jsonl")), "{zero}");
    if have_fifo {
        assert!(samples[1].as_ref().expect_err("fifo").to_string().contains("FIFO"));
    }
    // Both can be removed by name without being read (the link is removed, not /dev/zero).
    let (mut reopened, _) = LoraPool::open(dir.path()).expect("open");
    for name in want {
        reopened.remove(name).expect("remove");
    }
    assert!(open(dir.path()).len() == 2);
}

#[test]
fn concurrent_readers_never_see_a_half_written_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let mut writer = create(&path);
    let dim = 384;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut opened = 0;
            for _ in 0..200 {
                let (pool, skipped) = LoraPool::open(&path).expect("a reader must always see a consistent pool");
                assert!(skipped.is_empty(), "a reader saw a half-written entry: {skipped:?}");
                for e in pool.entries() {
                    assert_eq!(e.embedding.len(), dim);
                }
                opened += 1;
            }
            opened
        });
        for round in 0..30u64 {
            for i in 0..5u64 {
                writer.add_embedding(PoolEntry::new(format!("l{i}"), vector(round * 10 + i, dim), 20)).expect("add");
            }
            for i in 0..5u64 {
                writer.remove(&format!("l{i}")).expect("remove");
            }
        }
        assert_eq!(reader.join().expect("reader"), 200);
    });
}

#[derive(Debug, Clone)]
enum Op {
    Add(u8, u64),
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![(0u8..8, any::<u64>()).prop_map(|(n, s)| Op::Add(n, s)), (0u8..8).prop_map(Op::Remove)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any sequence of adds and removes (valid or not) leaves the live index equal to one rebuilt
    /// from scratch out of the surviving LoRAs, and reopening from disk gives that index again;
    /// searches agree too.
    #[test]
    fn index_equals_a_rebuild_after_any_add_remove_sequence(ops in prop::collection::vec(op(), 1..24)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut pool = create(dir.path());
        let mut live: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Add(n, seed) => {
                    let name = format!("lora-{n}");
                    let result = pool.add_embedding(PoolEntry::new(name.clone(), vector(seed, 16), 1));
                    prop_assert_eq!(result.is_ok(), !live.contains_key(&name));
                    live.entry(name).or_insert_with(|| vector(seed, 16));
                }
                Op::Remove(n) => {
                    let name = format!("lora-{n}");
                    prop_assert_eq!(pool.remove(&name).is_ok(), live.remove(&name).is_some());
                }
            }
        }
        let mut rebuilt = Index::new(16);
        for (name, v) in &live {
            rebuilt.add(name, v.clone()).expect("rebuild");
        }
        let reopened = open(dir.path());
        if live.is_empty() {
            prop_assert!(pool.index().is_empty() && reopened.index().is_empty());
        } else {
            prop_assert_eq!(pool.index(), &rebuilt);
            prop_assert_eq!(reopened.index(), &rebuilt);
        }
        let queries: Vec<Vec<f32>> = (0..3).map(|q| vector(1000 + q, 16)).collect();
        prop_assert_eq!(pool.index().top_k_batch(&queries, 3), rebuilt.top_k_batch(&queries, 3));
        prop_assert_eq!(reopened.index().top_k_batch(&queries, 3), rebuilt.top_k_batch(&queries, 3));
    }
}

#[test]
fn pool_json_names_the_entries_folder_and_old_pools_open_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pool = pool_with_two(d);
    assert!(!d.join("pool.json").exists(), "entries added by embedding record no encoder");
    assert_eq!(pool.encoder_identity(), None);
    assert_eq!(pool.entries_dir(), d.join("entries"));
    // A leftover folder of an interrupted re-embed is not read.
    std::fs::create_dir(d.join(".entries-1-0-0")).expect("mkdir");
    std::fs::write(d.join(".entries-1-0-0/alpha.json"), "{").expect("w");
    let reopened = open(d);
    assert_eq!(reopened.index(), pool.index());

    // pool.json may name another folder: the pool follows it; add and remove work there.
    std::fs::rename(d.join("entries"), d.join("moved")).expect("rename");
    std::fs::write(d.join("pool.json"), r#"{"format": "ramole-pool/1", "encoder": "abc", "entries": "moved"}"#)
        .expect("w");
    let mut moved = open(d);
    assert_eq!(moved.encoder_identity(), Some("abc"));
    assert_eq!(moved.index(), pool.index());
    moved.add_embedding(PoolEntry::new("gamma", vector(3, 8), 1)).expect("add");
    assert!(d.join("moved/gamma.json").is_file());
    moved.remove("alpha").expect("remove");
    assert!(!d.join("moved/alpha.json").exists());
    assert!(!d.join("entries").exists(), "create does not make `entries` when pool.json names the folder");
    let (_, skipped) = LoraPool::create(d).expect("create");
    assert!(skipped.is_empty());
    assert!(!d.join("entries").exists());

    // A pool.json that names no plain folder, or that is not one, is an error; a missing folder is no pool.
    for (text, words) in [
        (r#"{"format": "ramole-pool/1", "entries": "../elsewhere"}"#, "not a folder name"),
        (r#"{"format": "ramole-pool/1", "entries": "/tmp"}"#, "not a folder name"),
        (r#"{"format": "ramole-pool/9"}"#, "format"),
        ("{", "not a pool description"),
    ] {
        std::fs::write(d.join("pool.json"), text).expect("w");
        let err = LoraPool::open(d).expect_err(text);
        assert!(err.to_string().contains(words), "{text}: {err}");
    }
    std::fs::write(d.join("pool.json"), r#"{"format": "ramole-pool/1", "entries": "gone"}"#).expect("w");
    assert!(matches!(LoraPool::open(d), Err(RetrieverError::NoPool { .. })));
}
