//! The real all-MiniLM-L6-v2 (fetched and verified by the project's asset cache) against the
//! sentence-transformers fixture in tests/data/fixtures/minilm.

mod common;

use common::minilm_dir;

use std::path::{Path, PathBuf};

use ramole_core::backend::{Selected, device};
use ramole_models::weights::{SafetensorsWeights, WeightSource};
use ramole_retriever::{DEFAULT_INSTRUCTION, LoraPool, RetrieverError, SentenceEncoder};

type B = Selected;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/minilm")
}

struct Fixture {
    sentences: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    cosine_min: f32,
    embeddings: Vec<Vec<f32>>,
}

fn fixture() -> Fixture {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("cases.json")).expect("cases.json"))
            .expect("json");
    let sentences: Vec<String> = serde_json::from_value(cases["sentences"].clone()).expect("sentences");
    let token_ids: Vec<Vec<u32>> = serde_json::from_value(cases["token_ids"].clone()).expect("token_ids");
    let cosine_min = cases["tolerance"]["cosine_min"].as_f64().expect("tolerance") as f32;
    let reference = SafetensorsWeights::open(fixture_dir().join("reference.safetensors")).expect("reference");
    let emb = reference.load("embeddings", &[sentences.len(), 384]).expect("embeddings");
    let embeddings = emb.data.chunks_exact(384).map(<[f32]>::to_vec).collect();
    Fixture { sentences, token_ids, cosine_min, embeddings }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn assert_matches_reference(got: &[Vec<f32>], f: &Fixture) {
    assert_eq!(got.len(), f.embeddings.len());
    for (i, (g, want)) in got.iter().zip(&f.embeddings).enumerate() {
        assert_eq!(g.len(), 384);
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row {i} not unit: {norm}");
        let c = cosine(g, want);
        assert!(c >= f.cosine_min, "sentence {i} ({:.40?}): cosine {c} < {}", f.sentences[i], f.cosine_min);
    }
}

#[test]
fn tokenization_matches_the_fixture_including_truncation_at_256() {
    let f = fixture();
    let enc = SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load");
    assert_eq!(enc.max_seq_length(), 256);
    for (s, want) in f.sentences.iter().zip(&f.token_ids) {
        assert_eq!(&enc.token_ids(s).expect("tokenize"), want, "sentence {s:.40?}");
    }
    assert_eq!(f.token_ids.iter().map(Vec::len).max(), Some(256), "the fixture has a truncated sentence");
}

#[test]
fn embeddings_match_sentence_transformers() {
    let f = fixture();
    let enc = SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load");
    // Batches of 3 mix lengths (padding), batch 1 has none: both must match.
    assert_matches_reference(&enc.embed(&f.sentences, 3).expect("embed"), &f);
    assert_matches_reference(&enc.embed(&f.sentences, 1).expect("embed"), &f);
    // The differentiable path, one batch of everything.
    let refs: Vec<&str> = f.sentences.iter().map(String::as_str).collect();
    let t = enc.encode(&refs).expect("encode");
    assert_eq!(t.dims(), [f.sentences.len(), 384]);
    let flat: Vec<f32> = t.into_data().iter::<f32>().collect();
    let rows: Vec<Vec<f32>> = flat.chunks_exact(384).map(<[f32]>::to_vec).collect();
    assert_matches_reference(&rows, &f);
    assert!(matches!(enc.encode(&[]), Err(RetrieverError::Input(_))));
    assert!(matches!(enc.embed(&f.sentences, 0), Err(RetrieverError::InvalidArgument { name: "batch size", .. })));
    // Token ids given directly are checked (no panic in the embedding lookup).
    for bad in [vec![], vec![vec![]], vec![vec![101, 40_000, 102]], vec![vec![101; 257]]] {
        assert!(matches!(enc.encode_token_ids(&bad), Err(RetrieverError::Input(_))), "{bad:.3?} accepted");
    }
    let ids = vec![f.token_ids[1].clone()];
    let one: Vec<f32> = enc.encode_token_ids(&ids).expect("ids").into_data().iter::<f32>().collect();
    assert!(cosine(&one, &f.embeddings[1]) >= f.cosine_min);
}

#[test]
fn save_writes_a_folder_that_loads_back_to_the_same_encoder() {
    let f = fixture();
    let enc = SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load");
    let out = tempfile::tempdir().expect("tempdir");
    enc.save(out.path()).expect("save");
    for file in ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"] {
        assert!(out.path().join(file).is_file(), "{file} not written");
    }
    let again = SentenceEncoder::<B>::load(out.path(), &device()).expect("reload");
    let texts = f.sentences[..4].to_vec();
    assert_eq!(enc.embed(&texts, 4).expect("embed"), again.embed(&texts, 4).expect("embed"));
    assert_eq!(enc.model().named_tensors(), again.model().named_tensors());
}

#[cfg(unix)]
#[test]
fn model_folder_with_a_missing_file_is_a_typed_error() {
    let src = minilm_dir();
    for missing in ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("1_Pooling")).expect("mkdir");
        for file in ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"] {
            if file != missing {
                std::os::unix::fs::symlink(src.join(file), dir.path().join(file)).expect("symlink");
            }
        }
        let err = SentenceEncoder::<B>::load(dir.path(), &device()).expect_err("must fail");
        assert!(
            matches!(&err, RetrieverError::MissingModelFile { file, .. } if file == missing),
            "missing {missing}: got {err}"
        );
    }
}

#[test]
fn pool_add_stores_the_mean_of_instructed_sample_embeddings() {
    let enc = SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut pool, _) = LoraPool::create(dir.path()).expect("create");
    let math: Vec<String> =
        ["What is 80 plus 29?", "What is 13 times 7?", "Compute 5 minus 3."].map(String::from).into();
    let movies: Vec<String> =
        ["The movie was dull and far too long.", "I loved this film, what a cast!"].map(String::from).into();
    pool.add("math", None, &math, &enc).expect("add math");
    pool.add("movies", None, &movies, &enc).expect("add movies");

    let instructed: Vec<String> = math.iter().map(|s| format!("{DEFAULT_INSTRUCTION}{s}")).collect();
    let each = enc.embed(&instructed, 8).expect("embed");
    let mean: Vec<f32> = (0..384).map(|j| each.iter().map(|e| e[j]).sum::<f32>() / 3.0).collect();
    let entry = pool.get("math").expect("entry");
    assert_eq!(entry.n_samples, 3);
    assert_eq!(entry.instruction, DEFAULT_INSTRUCTION);
    for (a, b) in entry.embedding.iter().zip(&mean) {
        assert!((a - b).abs() < 1e-5);
    }

    let queries = [format!("{DEFAULT_INSTRUCTION}What is 7 plus 8?"), format!("{DEFAULT_INSTRUCTION}A boring film.")];
    let q = enc.embed(&queries, 2).expect("embed queries");
    let hits = pool.index().top_k_batch(&q, 2);
    assert_eq!(hits[0][0].0, "math");
    assert_eq!(hits[1][0].0, "movies");
    assert!(hits[0][0].1 > hits[0][1].1);

    let (reopened, skipped) = LoraPool::open(dir.path()).expect("reopen");
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(reopened.index(), pool.index());
}
