//! A pool records the identity of the encoder that embedded it: adding or querying with another
//! encoder is refused, and `reembed` switches the pool to another encoder atomically. On the real
//! all-MiniLM-L6-v2 (from the project's asset cache); the "other" encoder is the same folder with
//! another `max_seq_length` (its files linked, `sentence_bert_config.json` rewritten), which
//! changes both the identity and the embeddings of long samples.

mod common;

use common::minilm_dir;

use std::path::{Path, PathBuf};

use ramole_core::backend::{Selected, device};
use ramole_retriever::pool::POOL_FILE;
use ramole_retriever::{DEFAULT_INSTRUCTION, LoraPool, PoolEntry, RetrieverError, SentenceEncoder, UNSAVED_IDENTITY};

type B = Selected;

/// A copy of the MiniLM folder (files linked) whose `max_seq_length` is `max_seq_length`.
fn variant(root: &Path, max_seq_length: usize) -> PathBuf {
    let out = root.join(format!("minilm-{max_seq_length}"));
    std::fs::create_dir_all(out.join("1_Pooling")).expect("mkdir");
    for rel in ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"] {
        std::os::unix::fs::symlink(minilm_dir().join(rel), out.join(rel)).expect("link");
    }
    std::fs::write(
        out.join("sentence_bert_config.json"),
        format!("{{\"max_seq_length\": {max_seq_length}, \"do_lower_case\": false}}"),
    )
    .expect("write");
    out
}

fn texts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

/// Samples longer than 8 tokens, so that an 8-token encoder embeds them differently.
fn math() -> Vec<String> {
    texts(&["What is the sum of eighty and twenty nine, written out in words please?", "Compute 13 times 7."])
}

fn movies() -> Vec<String> {
    texts(&["The movie was dull and far too long, and the ending made no sense at all.", "I loved this film!"])
}

fn expected<Bk: burn::tensor::backend::Backend>(enc: &SentenceEncoder<Bk>, samples: &[String]) -> Vec<f32> {
    let instructed: Vec<String> = samples.iter().map(|s| format!("{DEFAULT_INSTRUCTION}{s}")).collect();
    let each = enc.embed(&instructed, 8).expect("embed");
    (0..enc.dim()).map(|j| each.iter().map(|e| e[j]).sum::<f32>() / samples.len() as f32).collect()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{what}: {x} vs {y}");
    }
}

/// Every file of the pool folder (recursively) with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn identity_is_stable_across_loads_and_differs_for_another_folder() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load");
    let b = SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load again");
    assert_eq!(a.identity(), b.identity());
    assert_eq!(a.identity().len(), 64);
    assert!(a.identity().bytes().all(|c| c.is_ascii_hexdigit()));
    let same = SentenceEncoder::<B>::load(variant(root.path(), 256), &device()).expect("same config");
    assert_eq!(same.identity(), a.identity(), "the same bytes and max_seq_length are the same encoder");
    let other = SentenceEncoder::<B>::load(variant(root.path(), 8), &device()).expect("other");
    assert_ne!(other.identity(), a.identity());
    let unsaved = a.clone().with_model(a.model().clone());
    assert_eq!(unsaved.identity(), UNSAVED_IDENTITY);
    assert!(unsaved.is_unsaved());
}

#[test]
fn another_encoder_is_refused_and_reembed_switches_the_pool_atomically() {
    let root = tempfile::tempdir().expect("tempdir");
    let enc = SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load");
    let other = SentenceEncoder::<B>::load(variant(root.path(), 8), &device()).expect("other");
    let dir = root.path().join("pool");
    let (mut pool, _) = LoraPool::create(&dir).expect("create");
    assert_eq!(pool.encoder_identity(), None);
    pool.add("math", None, &math(), &enc).expect("add math");
    assert_eq!(pool.encoder_identity(), Some(enc.identity()));
    let (reopened, _) = LoraPool::open(&dir).expect("open");
    assert_eq!(reopened.encoder_identity(), Some(enc.identity()), "recorded in pool.json");
    reopened.check_encoder(&enc).expect("the pool's own encoder queries it");

    // Adding or querying with another encoder is refused; nothing changes on disk.
    let before = tree(&dir);
    let err = pool.add("movies", None, &movies(), &other).expect_err("another encoder");
    match &err {
        RetrieverError::EncoderMismatch { recorded, given, .. } => {
            assert_eq!(recorded, enc.identity());
            assert_eq!(given, other.identity());
        }
        e => panic!("expected EncoderMismatch, got {e}"),
    }
    assert!(err.to_string().contains("ramole pool reembed"), "{err}");
    assert!(err.to_string().contains("--model"), "{err}");
    assert!(matches!(reopened.check_encoder(&other), Err(RetrieverError::EncoderMismatch { .. })));
    let unsaved = enc.clone().with_model(enc.model().clone());
    let err = pool.add("movies", None, &movies(), &unsaved).expect_err("unsaved encoder");
    assert!(matches!(err, RetrieverError::UnsavedEncoder { .. }), "{err}");
    assert!(err.to_string().contains("save it and load it"), "{err}");
    assert!(matches!(pool.reembed(&unsaved), Err(RetrieverError::UnsavedEncoder { .. })));
    assert_eq!(tree(&dir), before, "refusals change nothing");
    assert_eq!(pool.len(), 1);

    pool.add("movies", None, &movies(), &enc).expect("add movies");
    let old_math = pool.get("math").expect("math").embedding.clone();

    // A crash after the new entries are written but before pool.json is switched: the old pool opens.
    let staged = pool.stage_reembed(&other).expect("stage");
    assert!(staged.is_dir());
    let (after_crash, skipped) = LoraPool::open(&dir).expect("open after the crash");
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(after_crash.encoder_identity(), Some(enc.identity()));
    assert_eq!(after_crash.get("math").expect("math").embedding, old_math);
    assert_eq!(after_crash.len(), 2);
    after_crash.check_encoder(&other).expect_err("still the old encoder's pool");

    // The real re-embed cleans the leftover folder and switches the identity.
    let n = pool.reembed(&other).expect("reembed");
    assert_eq!(n, 2);
    assert!(!staged.exists(), "the leftover folder of the crashed re-embed is deleted");
    assert!(!dir.join("entries").exists(), "the old entries folder is deleted");
    assert_eq!(pool.encoder_identity(), Some(other.identity()));
    let (reopened, skipped) = LoraPool::open(&dir).expect("open after reembed");
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(reopened.encoder_identity(), Some(other.identity()));
    assert_eq!(reopened.len(), 2);
    for (name, samples) in [("math", math()), ("movies", movies())] {
        let e = reopened.get(name).expect("entry");
        assert_eq!(e.samples, samples);
        assert_close(&e.embedding, &expected(&other, &samples), name);
        assert_eq!(e.embedding, pool.get(name).expect("in memory").embedding);
    }
    assert_ne!(reopened.get("math").expect("math").embedding, old_math, "the 8-token encoder embeds differently");
    reopened.check_encoder(&other).expect("the new encoder");
    assert!(matches!(reopened.check_encoder(&enc), Err(RetrieverError::EncoderMismatch { .. })));

    // Add and remove keep working on the new entries folder, and back again.
    pool.remove("movies").expect("remove");
    pool.add("movies", None, &movies(), &other).expect("add with the new encoder");
    assert_eq!(LoraPool::open(&dir).expect("open").0.len(), 2);
    assert_eq!(pool.reembed(&enc).expect("reembed back"), 2);
    let (back, _) = LoraPool::open(&dir).expect("open");
    assert_close(&back.get("math").expect("math").embedding, &old_math, "math re-embedded with the first encoder");
    let dirs: Vec<String> = std::fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != POOL_FILE)
        .collect();
    assert_eq!(dirs.len(), 1, "only the current entries folder is left: {dirs:?}");
}

#[test]
fn entries_without_samples_refuse_the_whole_reembed() {
    let root = tempfile::tempdir().expect("tempdir");
    let enc = SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load");
    let other = SentenceEncoder::<B>::load(variant(root.path(), 8), &device()).expect("other");
    let dir = root.path().join("pool");
    let (mut pool, _) = LoraPool::create(&dir).expect("create");
    pool.add("math", None, &math(), &enc).expect("add");
    pool.add_embedding(PoolEntry::new("bare", vec![1.0; 384], 4)).expect("add bare");
    let before = tree(&dir);
    let err = pool.reembed(&other).expect_err("bare has no samples");
    assert!(matches!(err, RetrieverError::NotReembeddable { .. }), "{err}");
    assert!(err.to_string().contains("bare"), "{err}");
    assert_eq!(tree(&dir), before, "nothing written");
    // A bad entry file would be lost: refused too.
    pool.remove("bare").expect("remove");
    std::fs::write(dir.join("entries/broken.json"), "{").expect("w");
    let err = pool.reembed(&other).expect_err("broken entry");
    assert!(err.to_string().contains("broken"), "{err}");
    assert_eq!(LoraPool::open(&dir).expect("open").0.encoder_identity(), Some(enc.identity()));
}

#[test]
fn a_pool_without_pool_json_accepts_any_encoder_and_records_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let enc = SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load");
    let dir = root.path().join("pool");
    let (mut pool, _) = LoraPool::create(&dir).expect("create");
    pool.add_embedding(PoolEntry::new("old", vec![1.0; 384], 1)).expect("old entry");
    assert!(!dir.join(POOL_FILE).exists(), "an entry added by embedding records no encoder");
    let (mut old, _) = LoraPool::open(&dir).expect("an old pool opens");
    assert_eq!(old.encoder_identity(), None);
    old.check_encoder(&enc).expect("unknown identity: accepted");
    old.add("math", None, &math(), &enc).expect("add");
    assert_eq!(LoraPool::open(&dir).expect("open").0.encoder_identity(), Some(enc.identity()));
}
