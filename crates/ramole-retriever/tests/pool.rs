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

fn pool_with_two(dir: &Path) -> LoraPool {
    let mut pool = LoraPool::open(dir).expect("open");
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
    assert_eq!(LoraPool::open(pool.dir()).expect("reopen").index(), &before_index);
}

#[test]
fn add_list_remove_round_trip_through_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pool = pool_with_two(dir.path());
    let reopened = LoraPool::open(dir.path()).expect("reopen");
    assert_eq!(reopened.entries(), pool.entries());
    let beta = reopened.get("beta").expect("beta");
    assert_eq!(beta.adapter.as_deref(), Some(std::fs::canonicalize(adapter_fixture()).expect("canon").as_path()));
    assert_eq!(beta.n_samples, 3);
    assert_eq!(beta.embedding, vector(2, 8), "embedding must read back bit for bit");

    pool.remove("alpha").expect("remove");
    assert_eq!(pool.len(), 1);
    assert!(!dir.path().join("entries/alpha.json").exists());
    let reopened = LoraPool::open(dir.path()).expect("reopen");
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
    let mut stale = LoraPool::open(fresh.path()).expect("open");
    let mut other = LoraPool::open(fresh.path()).expect("open");
    other.add_embedding(PoolEntry::new("alpha", vector(1, 8), 1)).expect("add");
    let err = stale.add_embedding(PoolEntry::new("alpha", vector(5, 8), 1)).expect_err("clobber");
    assert!(matches!(err, RetrieverError::DuplicateName { .. }));
    assert_eq!(LoraPool::open(fresh.path()).expect("open").get("alpha").expect("alpha").embedding, vector(1, 8));
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
}

#[test]
fn a_crash_mid_write_leaves_the_previous_pool_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool_with_two(dir.path());
    // What a writer killed before its rename/link leaves behind: a partial temporary file.
    std::fs::write(dir.path().join("entries/.gamma.json.tmp-999-0"), "{\"format\": \"ramole-pool-en").expect("w");
    let reopened = LoraPool::open(dir.path()).expect("reopen skips temporary files");
    assert_eq!(reopened.index(), pool.index());
    assert!(reopened.get("gamma").is_none());
    // A corrupt *published* entry is reported, naming its file (never silently dropped).
    std::fs::write(dir.path().join("entries/delta.json"), "{").expect("w");
    let err = LoraPool::open(dir.path()).expect_err("corrupt entry");
    assert!(matches!(&err, RetrieverError::Format { path, .. } if path.ends_with("delta.json")), "{err}");
}

#[test]
fn concurrent_readers_never_see_a_half_written_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let mut writer = LoraPool::open(&path).expect("open");
    let dim = 384;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut opened = 0;
            for _ in 0..200 {
                let pool = LoraPool::open(&path).expect("a reader must always see a consistent pool");
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
        let mut pool = LoraPool::open(dir.path()).expect("open");
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
        let reopened = LoraPool::open(dir.path()).expect("reopen");
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
