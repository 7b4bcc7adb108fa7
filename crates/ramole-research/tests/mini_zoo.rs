//! RAMoLE end to end on the tiny Llama: a two-task suite, its zoo trained and registered in a pool,
//! inputs routed by retrieval and answered in mixed batches, and the paper's comparison on it.

use std::path::Path;

use ramole_assets::AssetCache;
use ramole_batch::Engine;
use ramole_core::backend::{Selected, device};
use ramole_mole::train::{LoraTrainConfig, TrainLength};
use ramole_pipeline::{Job, Ramole, RouteConfig, Strategy, Weighting};
use ramole_research::comparison::{self, ComparisonConfig, Record};
use ramole_research::tasks::Suite;
use ramole_research::zoo::{self, ZooConfig, ZooEvent};
use ramole_retriever::SentenceEncoder;

/// Two tasks with a constant answer each, and inputs that tell them apart.
const TASKS: [(&str, &str, &str, &[&str]); 2] = [
    (
        "shout",
        "syntax",
        "yes",
        &["Say it loud: hello", "Say it loud: tree", "Say it loud: river", "Say it loud: stone"],
    ),
    (
        "count",
        "arithmetic",
        "7",
        &[
            "How many apples are there? 3 + 4",
            "How many pears are there? 5 + 2",
            "How many figs are there? 6 + 1",
            "How many plums are there? 1 + 6",
        ],
    ),
];

fn write_suite(dir: &Path) {
    let mut tasks = Vec::new();
    for (name, domain, target, inputs) in TASKS {
        let task_dir = dir.join(name);
        std::fs::create_dir_all(&task_dir).expect("mkdir");
        let line = |i: &str| serde_json::json!({"task": name, "input": i, "target": target}).to_string();
        // Train on many variants of the inputs, test on the listed ones.
        let train: Vec<String> = (0..24).map(|k| line(&format!("{} {k}", inputs[k % inputs.len()]))).collect();
        std::fs::write(task_dir.join("train.jsonl"), train.join("\n") + "\n").expect("write");
        let test: Vec<String> = inputs.iter().map(|i| line(i)).collect();
        std::fs::write(task_dir.join("test.jsonl"), test.join("\n") + "\n").expect("write");
        std::fs::write(task_dir.join("samples.jsonl"), train[..4].join("\n") + "\n").expect("write");
        tasks.push(serde_json::json!({"name": name, "domain": domain, "held_out": false, "metric": "exact_match",
            "source": "bigbench", "files": "handmade", "examples": 28, "unique": 28, "used": 28, "train": 24,
            "test": 4, "samples": 4}));
    }
    let suite = serde_json::json!({
        "format": 2, "digest": "handmade", "seed": 1, "max_examples": 28, "test_fraction": 0.15,
        "min_test": 4, "samples_per_task": 4,
        "domains": {"syntax": ["shout"], "arithmetic": ["count"]}, "tasks": tasks,
    });
    std::fs::write(dir.join("suite.json"), suite.to_string()).expect("write");
}

fn value(records: &[Record], strategy: &str, setting: &str, task: &str) -> f64 {
    records
        .iter()
        .find(|r| r.strategy == strategy && r.setting == setting && r.task == task && r.metric == "em")
        .unwrap_or_else(|| panic!("no record {strategy} {setting} {task}"))
        .value
}

#[test]
fn a_two_task_zoo_is_trained_routed_and_compared() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = ramole_testkit::tiny_llama_with_tokenizer(tmp.path()).expect("tiny model");
    let suite_dir = tmp.path().join("suite");
    write_suite(&suite_dir);
    let suite = Suite::load(&suite_dir).expect("suite");
    let minilm = AssetCache::from_env().expect("cache").quiet(true).minilm_dir().expect("MiniLM");
    let dev = device();
    let encoder = SentenceEncoder::<Selected>::load(&minilm, &dev).expect("encoder");

    let cfg = ZooConfig {
        train: LoraTrainConfig {
            rank: 8,
            alpha: 16.0,
            targets: ramole_models::llama::LinearKind::ALL.to_vec(),
            length: TrainLength::Steps(150),
            batch_size: 8,
            lr: 2e-2,
            max_len: 64,
            ..LoraTrainConfig::default()
        },
        ..ZooConfig::default()
    };
    let root = tmp.path().join("zoo");
    let mut steps = 0;
    let report = zoo::build_zoo(&suite, &model, &root, &cfg, &encoder, &dev, &mut |e| {
        if let ZooEvent::Step(_) = e {
            steps += 1;
        }
    })
    .expect("zoo");
    assert_eq!(report.trained.len(), 2);
    assert_eq!(steps, 300);
    for (task, r) in &report.trained {
        let (first, last) = r.loss_ends(5);
        assert!(last < 0.5 * first, "{task}: loss {first} -> {last}");
    }
    // Resumable: nothing to do the second time, the pool is kept.
    let again = zoo::build_zoo(&suite, &model, &root, &cfg, &encoder, &dev, &mut |_| {}).expect("zoo");
    assert!(again.trained.is_empty());
    assert_eq!(again.up_to_date, vec!["shout".to_string(), "count".to_string()]);
    // Another encoder is refused before any training (the pool records the first one).
    let trained = ramole_retriever::default_encoder::adapter().expect("shipped LoRA");
    let other =
        SentenceEncoder::<Selected>::load(&minilm, &dev).expect("encoder").with_adapter(&trained).expect("apply");
    let cfg_new = ZooConfig { train: LoraTrainConfig { seed: 99, ..cfg.train.clone() }, ..cfg.clone() };
    let mut events = 0;
    let err = zoo::build_zoo(&suite, &model, &root, &cfg_new, &other, &dev, &mut |_| events += 1).expect_err("refused");
    assert!(err.to_string().contains("was embedded by the encoder"), "{err}");
    assert_eq!(events, 0, "nothing was trained");
    // The adapters are stored relative to the pool, which can be moved whole.
    let moved = tmp.path().join("moved");
    std::fs::rename(&root, &moved).expect("move");
    let (pool, skipped) = ramole_retriever::LoraPool::open(zoo::pool_dir(&moved)).expect("pool");
    assert!(skipped.is_empty());
    assert_eq!(pool.len(), 2);
    assert!(pool.entries().iter().all(|e| e.adapter.as_ref().is_some_and(|a| a.is_relative())));

    let engine = Engine::<Selected>::load(&model, &dev).expect("engine");
    let (ramole, unservable) = Ramole::new(engine, encoder, pool).expect("pipeline");
    assert!(unservable.is_empty());
    assert_eq!(ramole.servable(), vec!["count", "shout"]);

    // Mixed inputs routed by retrieval in one batch: each gets its own task's LoRA and its answer.
    let jobs: Vec<Job> = ["Say it loud: cloud", "How many kiwis are there? 2 + 5", "Say it loud: sun"]
        .iter()
        .map(|i| Job { input: i.to_string(), max_new_tokens: 4 })
        .collect();
    let selection = RouteConfig {
        strategy: Strategy::Selection,
        top_k: 1,
        weighting: Weighting::Uniform,
        ..RouteConfig::default()
    };
    let answers = ramole.run(&jobs, &selection, 8).expect("run");
    let expect = ["shout", "count", "shout"];
    let outputs = [("shout", "yes"), ("count", "7")];
    for (answer, task) in answers.iter().zip(expect) {
        let a = answer.as_ref().expect("answered");
        assert_eq!(a.routing.loras[0].lora, task);
        assert!(a.routing.loras[0].score.is_some_and(|s| s > 0.0 && s <= 1.0));
        let want = outputs.iter().find(|(t, _)| *t == task).map(|(_, o)| *o).expect("task");
        assert_eq!(a.output.trim(), want, "{task}: tokens {:?}", a.new_tokens);
    }
    // Mixture of the top 2: both LoRAs with uniform weights.
    let mixture =
        RouteConfig { strategy: Strategy::Mixture, top_k: 2, weighting: Weighting::Uniform, ..RouteConfig::default() };
    let answers = ramole.run(&jobs, &mixture, 8).expect("run");
    for a in answers.iter().map(|a| a.as_ref().expect("answered")) {
        assert_eq!(a.routing.loras.len(), 2);
        assert!(a.routing.loras.iter().all(|l| l.weight == 0.5));
    }
    // Arrow over the top 2, one LoRA kept per token: both retrieved, the choice made per token.
    let arrow = RouteConfig {
        strategy: Strategy::Arrow,
        top_k: 2,
        arrow: ramole_core::lora::ArrowParams { top_k: 1, temperature: 1.0 },
        ..RouteConfig::default()
    };
    let answers = ramole.run(&jobs, &arrow, 8).expect("run");
    for a in answers.iter().map(|a| a.as_ref().expect("answered")) {
        assert_eq!(a.routing.loras.len(), 2);
        let composition = a.routing.row_request().composition;
        assert!(matches!(composition, ramole_core::lora::Composition::Arrow(p) if p.top_k == 1), "{composition:?}");
        assert!(!a.new_tokens.is_empty());
    }

    // The comparison: perfect and IID selection answer every test input, the base model none, and
    // OOD selection (own LoRA removed: the other task's) none either.
    let records = comparison::compare(
        &ramole,
        &suite,
        &ComparisonConfig { per_task: 4, batch_size: 3, ..ComparisonConfig::default() },
        &mut |_| {},
    )
    .expect("comparison");
    for task in ["shout", "count"] {
        let perfect = value(&records, "perfect", "iid", task);
        assert!(perfect >= 0.75, "{task}: perfect selection EM {perfect}");
        // Retrieval finds each input's own LoRA, so selection equals perfect selection in IID.
        assert_eq!(value(&records, "selection", "iid", task), perfect, "{task}");
        assert_eq!(value(&records, "base", "iid", task), 0.0, "{task}");
        assert_eq!(value(&records, "selection", "ood", task), 0.0, "{task}");
    }
    let overall = records
        .iter()
        .find(|r| r.strategy == "perfect" && r.task == "*" && r.domain == "*" && r.metric == "em")
        .expect("overall");
    assert!(overall.value >= 0.75 && overall.n == 8, "{overall:?}");
    assert!(records.iter().all(|r| (0.0..=1.0).contains(&r.value)));
    assert!(records.iter().any(|r| r.strategy == "arrow" && r.setting == "ood"), "arrow rows in the comparison");
    let table = comparison::to_markdown(&records);
    assert!(table.contains("| shout | syntax | EM |") && table.contains("perfect IID"), "{table}");
    // Domains and the overall score (each input's main metric) have rows of their own.
    assert!(table.contains("| *syntax* | syntax | score |") && table.contains("| **overall** | | score |"), "{table}");
    let score = records
        .iter()
        .find(|r| r.strategy == "perfect" && r.task == "*" && r.domain == "*" && r.metric == "score")
        .expect("overall score");
    assert_eq!((score.value, score.n), (overall.value, overall.n), "all exact-match tasks: the score is the EM");
}
