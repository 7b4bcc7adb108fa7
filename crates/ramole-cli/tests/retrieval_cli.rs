//! `ramole embed`, `ramole pool`, `ramole retrieve` and `ramole train-retriever` end to end, on the real
//! all-MiniLM-L6-v2 (the binary fetches it through the asset cache) and the default trained retriever
//! (the same with the project's LoRA).

mod common;

use common::{fixtures, ramole, s};

use ramole_models::weights::{SafetensorsWeights, WeightSource};

/// Runs `ramole args`, expecting success; returns stdout.
fn ok(args: &[&str]) -> String {
    String::from_utf8(common::ok(args).stdout).expect("utf-8")
}

#[test]
fn embed_writes_the_fixture_embeddings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("e.safetensors");
    let cases = fixtures().join("minilm/cases.json");
    ok(&["embed", "--requests", s(&cases), "--out", s(&out), "--batch-size", "4", "--model", "base"]);
    let got = SafetensorsWeights::open(&out).expect("output");
    let reference = SafetensorsWeights::open(fixtures().join("minilm/reference.safetensors")).expect("reference");
    let n = 10;
    let (g, r) =
        (got.load("embeddings", &[n, 384]).expect("embeddings"), reference.load("embeddings", &[n, 384]).expect("ref"));
    for (i, (a, b)) in g.data.chunks_exact(384).zip(r.data.chunks_exact(384)).enumerate() {
        let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(cos >= 0.9999, "row {i}: cosine {cos}");
    }
}

#[test]
fn pool_add_list_retrieve_remove_and_bad_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let math = dir.path().join("math.jsonl");
    std::fs::write(&math, "\"What is 80 plus 29?\"\n{\"input\": \"What is 13 times 7?\"}\n").expect("w");
    let movies = dir.path().join("movies.jsonl");
    std::fs::write(&movies, "\"The movie was dull and far too long.\"\n\"I loved this film!\"\n").expect("w");
    let adapter = fixtures().join("tiny-llama/adapters/a0");

    ok(&["pool", "--pool", s(&pool), "add", "math", "--samples", s(&math), "--adapter", s(&adapter)]);
    ok(&["pool", "add", "movies", "--samples", s(&movies), "--pool", s(&pool)]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["pool", "--pool", s(&pool), "list", "--json"])).expect("json");
    let names: Vec<&str> =
        listed.as_array().expect("array").iter().map(|e| e["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["math", "movies"]);
    assert_eq!(listed[0]["n_samples"], 2);

    let queries = dir.path().join("q.jsonl");
    std::fs::write(&queries, "{\"input\": \"A boring film.\"}\n").expect("w");
    let found: serde_json::Value = serde_json::from_str(&ok(&[
        "retrieve",
        "--pool",
        s(&pool),
        "--top-k",
        "2",
        "--json",
        "--input",
        s(&queries),
        "What is 7 plus 8?",
    ]))
    .expect("json");
    let results = found["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["input"], "What is 7 plus 8?");
    assert_eq!(results[0]["hits"][0]["name"], "math");
    assert!(results[0]["hits"][0]["adapter"].as_str().is_some_and(|a| a.ends_with("a0")));
    assert_eq!(results[1]["hits"][0]["name"], "movies");
    let (top, second) = (results[1]["hits"][0]["cosine"].as_f64(), results[1]["hits"][1]["cosine"].as_f64());
    assert!(top > second, "{top:?} vs {second:?}");
    let text = ok(&["retrieve", "--pool", s(&pool), "--top-k", "1", "What is 7 plus 8?"]);
    assert!(text.contains("1. ") && text.contains("math"), "{text}");

    // Bad inputs: non-zero exit, message naming the problem, pool unchanged.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").expect("w");
    let bad_adapter = dir.path().join("not-an-adapter");
    std::fs::create_dir(&bad_adapter).expect("mkdir");
    for (args, message) in [
        (vec!["add", "math", "--samples", s(&math)], "already exists"),
        (vec!["add", "../x", "--samples", s(&math)], "invalid LoRA name"),
        (vec!["add", "x", "--samples", s(&empty)], "no samples"),
        (vec!["add", "x", "--samples", s(&math), "--adapter", s(&bad_adapter)], "adapter"),
        (vec!["remove", "nope"], "no LoRA named"),
    ] {
        let mut full = vec!["pool", "--pool", s(&pool)];
        full.extend(args);
        let out = ramole(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{full:?}: {stderr}");
    }
    let entries: Vec<String> = std::fs::read_dir(pool.join("entries"))
        .expect("entries")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");

    ok(&["pool", "--pool", s(&pool), "remove", "math"]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["pool", "--pool", s(&pool), "list", "--json"])).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
}

/// The cached all-MiniLM-L6-v2 with `max_seq_length` 8 (files linked): another encoder identity.
fn short_minilm(root: &std::path::Path) -> std::path::PathBuf {
    let minilm = ramole_assets::AssetCache::from_env().expect("cache").quiet(true).minilm_dir().expect("minilm");
    let out = root.join("minilm-8");
    std::fs::create_dir_all(out.join("1_Pooling")).expect("mkdir");
    for rel in ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"] {
        std::os::unix::fs::symlink(minilm.join(rel), out.join(rel)).expect("link");
    }
    std::fs::write(out.join("sentence_bert_config.json"), r#"{"max_seq_length": 8}"#).expect("w");
    out
}

#[test]
fn another_encoder_is_refused_until_the_pool_is_reembedded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let other = short_minilm(dir.path());
    let math = dir.path().join("math.jsonl");
    std::fs::write(&math, "\"What is the sum of eighty and twenty nine, in words?\"\n").expect("w");
    let movies = dir.path().join("movies.jsonl");
    std::fs::write(&movies, "\"The movie was dull and far too long, and the ending was silly.\"\n").expect("w");
    ok(&["pool", "--pool", s(&pool), "add", "math", "--samples", s(&math)]);
    let listed = |pool: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&ok(&["pool", "--pool", s(pool), "list", "--json"])).expect("json")
    };
    let first = listed(&pool)[0]["encoder"].as_str().expect("recorded").to_owned();
    assert_eq!(first.len(), 64);
    assert!(ok(&["pool", "--pool", s(&pool), "list"]).contains(&format!("encoder: {first}")));

    let err =
        common::fails(&["pool", "--pool", s(&pool), "add", "movies", "--samples", s(&movies), "--model", s(&other)]);
    assert!(err.contains("ramole pool reembed") && err.contains("--model"), "{err}");
    let err = common::fails(&["retrieve", "--pool", s(&pool), "--model", s(&other), "A boring film."]);
    assert!(err.contains("was embedded by the encoder"), "{err}");
    assert_eq!(listed(&pool).as_array().expect("array").len(), 1, "the refused add changed nothing");

    let out = common::ok(&["pool", "--pool", s(&pool), "reembed", "--model", s(&other)]);
    let said = common::stderr(&out);
    assert!(said.contains("re-embedded 1 LoRAs"), "{said}");
    let second = listed(&pool)[0]["encoder"].as_str().expect("recorded").to_owned();
    assert_ne!(second, first);
    ok(&["pool", "--pool", s(&pool), "add", "movies", "--samples", s(&movies), "--model", s(&other)]);
    ok(&["retrieve", "--pool", s(&pool), "--model", s(&other), "A boring film."]);
    let err = common::fails(&["retrieve", "--pool", s(&pool), "A boring film."]);
    assert!(err.contains("was embedded by the encoder"), "the default encoder is now refused: {err}");
}

/// A handmade suite: three tasks of 12 train / 4 test / 4 sample inputs, in two domains; `jokes` held out.
fn tiny_suite(dir: &std::path::Path) -> std::path::PathBuf {
    let suite = dir.join("suite");
    let mut tasks = Vec::new();
    for (name, prefix, domain, held_out) in [
        ("sums", "What is the sum of these two numbers", "arithmetic", false),
        ("films", "Is this movie review positive or negative", "classification", false),
        ("jokes", "Is this joke funny or not funny", "classification", true),
    ] {
        std::fs::create_dir_all(suite.join(name)).expect("mkdir");
        for (file, n) in [("train.jsonl", 12), ("test.jsonl", 4), ("samples.jsonl", 4)] {
            let lines: Vec<String> = (0..n)
                .map(|k| {
                    serde_json::json!({"task": name, "input": format!("{prefix}: {file} {k}"), "target": "x"})
                        .to_string()
                })
                .collect();
            std::fs::write(suite.join(name).join(file), lines.join("\n") + "\n").expect("write");
        }
        tasks.push(serde_json::json!({"name": name, "domain": domain, "held_out": held_out, "metric": "exact_match",
            "source": "bigbench", "files": "handmade", "examples": 20, "unique": 20, "used": 20, "train": 12, "test": 4, "samples": 4}));
    }
    let meta = serde_json::json!({"format": 2, "digest": "handmade", "seed": 1, "min_test": 4,
        "max_examples": 20, "test_fraction": 0.2, "samples_per_task": 4,
        "domains": {"arithmetic": ["sums"], "classification": ["films", "jokes"]}, "tasks": tasks});
    std::fs::write(suite.join("suite.json"), meta.to_string()).expect("write");
    suite
}

/// Embeddings `ramole embed` writes for three texts with `--model` = `model` (none: the default).
fn embeddings(dir: &std::path::Path, model: Option<&str>) -> Vec<f32> {
    let texts = dir.join("texts.jsonl");
    std::fs::write(&texts, "\"What is 80 plus 29?\"\n\"A boring film.\"\n\"Pluralise: cat\"\n").expect("w");
    let out = dir.join("e.safetensors");
    let mut args = vec!["embed", "--requests", s(&texts), "--out", s(&out)];
    args.extend(model.map(|m| ["--model", m]).into_iter().flatten());
    ok(&args);
    let got = SafetensorsWeights::open(&out).expect("output");
    got.load("embeddings", &[3, 384]).expect("embeddings").data
}

#[test]
fn the_default_encoder_is_the_trained_one_and_train_retriever_writes_an_adapter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ramole-retriever/default-encoder");
    let (default, base) = (embeddings(dir.path(), None), embeddings(dir.path(), Some("base")));
    let shipped_folder = embeddings(dir.path(), Some(s(&shipped)));
    assert_eq!(default, shipped_folder, "the default is the shipped adapter on the cached MiniLM");
    let diff = default.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-3, "the default is not the untrained encoder (max diff {diff})");

    // A pool embedded by the default refuses the base encoder, and says how to ask for either.
    let pool = dir.path().join("pool");
    let math = dir.path().join("math.jsonl");
    std::fs::write(&math, "\"What is 80 plus 29?\"\n").expect("w");
    ok(&["pool", "--pool", s(&pool), "add", "math", "--samples", s(&math)]);
    let err = common::fails(&["retrieve", "--pool", s(&pool), "--model", "base", "What is 1 plus 2?"]);
    assert!(err.contains("was embedded by the encoder") && err.contains("--model base"), "{err}");

    // train-retriever (from the base by default) writes an adapter folder that `--model` loads.
    let suite = tiny_suite(dir.path());
    let out = dir.path().join("adapter");
    let train = [
        "train-retriever",
        "--tasks",
        s(&suite),
        "--out",
        s(&out),
        "--pairs-per-task",
        "4",
        "--batch-size",
        "4",
        "--max-seq-len",
        "16",
        "--domain-weight",
        "0.5",
    ];
    let said = ok(&train);
    assert!(said.contains("epoch 1: 8 pairs, 2 steps"), "{said}");
    for file in ["adapter_config.json", "adapter_model.safetensors", "ramole_encoder.json", "train_report.json"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let err = common::fails(&train);
    assert!(err.contains("already exists"), "{err}");
    // Deterministic for its seed: a second run writes the same weights.
    let mut again: Vec<&str> = train.to_vec();
    again.push("--force");
    let first = std::fs::read(out.join("adapter_model.safetensors")).expect("read");
    ok(&again);
    assert!(first == std::fs::read(out.join("adapter_model.safetensors")).expect("read"), "same seed, same LoRA");
    let fresh = dir.path().join("on-an-adapter");
    let err = common::fails(&["train-retriever", "--tasks", s(&suite), "--out", s(&fresh), "--model", s(&shipped)]);
    assert!(err.contains("is an encoder adapter") && !fresh.exists(), "{err}");
    let trained = embeddings(dir.path(), Some(s(&out)));
    assert_ne!(trained, base);
    assert_ne!(trained, default);

    // eval-retrieval puts the untrained encoder beside the one evaluated.
    let report = ok(&["eval-retrieval", "--tasks", s(&suite), "--model", s(&out), "--per-task", "2"]);
    assert!(report.contains("before: all-MiniLM-L6-v2") && report.contains("| held out | 2 |"), "{report}");
    let alone = ok(&["eval-retrieval", "--tasks", s(&suite), "--model", "base", "--per-task", "2"]);
    assert!(!alone.contains("before:"), "{alone}");
}
