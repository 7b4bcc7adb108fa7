//! Retrieval evaluation: the metrics on hand-made embeddings, and a small real run (real BIG-bench tasks,
//! real all-MiniLM-L6-v2, both fetched by the project's asset cache).

use ramole_core::backend::{Selected, device};
use ramole_research::ResearchError;
use ramole_research::retrieval_eval::{EvalConfig, EvalReport, EvalTask, SuiteEmbeddings, evaluate, score};
use ramole_research::tasks::{Domain, Suite, SuiteConfig, build_suite};
use ramole_research::train_retriever::TrainConfig;
use ramole_retriever::SentenceEncoder;

fn task(name: &str, domain: Domain, held_out: bool) -> EvalTask {
    EvalTask { name: name.into(), domain, held_out }
}

/// Four LoRAs in two domains; expected hits worked out by hand (cosines in the comments).
fn hand_made() -> SuiteEmbeddings {
    SuiteEmbeddings {
        tasks: vec![
            task("a1", Domain::Arithmetic, true),
            task("a2", Domain::Arithmetic, false),
            task("b1", Domain::Reasoning, true),
            task("b2", Domain::Reasoning, false),
        ],
        loras: vec![vec![1.0, 0.0, 0.0], vec![0.8, 0.6, 0.0], vec![0.0, 0.0, 1.0], vec![0.0, 0.6, 0.8]],
        queries: vec![
            vec![
                // a1 1.0, a2 0.8: IID hit; OOD top-1 a2 (same domain).
                vec![1.0, 0.0, 0.0],
                // b1 .995, b2 .856, a2 .060, a1 0: IID miss at 1 and 3; OOD top-1 b1 (miss), a2 in top-3 (hit).
                vec![0.0, 0.1, 1.0],
            ],
            vec![],
            // b1 .981, b2 .902, a2 .118: IID hit; OOD top-1 b2 (same domain).
            vec![vec![0.0, 0.2, 1.0]],
            // b2 1.0, b1 .8, a2 .36: IID hit; OOD top-1 b1.
            vec![vec![0.0, 0.6, 0.8]],
        ],
    }
}

#[test]
fn eval_scores_match_hand_computed_hits() {
    let report = score(&hand_made()).expect("score");
    let a1 = &report.tasks[0].scores;
    assert_eq!(a1.queries, 2);
    assert_eq!((a1.iid_top1, a1.iid_top3, a1.ood_domain_top1, a1.ood_domain_top3), (0.5, 0.5, 0.5, 1.0));
    assert_eq!(report.tasks[1].scores.queries, 0);
    for t in &report.tasks[2..] {
        let s = &t.scores;
        assert_eq!((s.queries, s.iid_top1, s.iid_top3, s.ood_domain_top1, s.ood_domain_top3), (1, 1.0, 1.0, 1.0, 1.0));
    }
    let o = &report.overall;
    assert_eq!((o.queries, o.iid_top1, o.iid_top3, o.ood_domain_top1, o.ood_domain_top3), (4, 0.75, 0.75, 0.75, 1.0));
    let h = &report.held_out;
    assert_eq!(h.queries, 3, "a1 and b1 are held out");
    assert!((h.iid_top1 - 2.0 / 3.0).abs() < 1e-12 && (h.ood_domain_top1 - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(h.ood_domain_top3, 1.0);
    assert_eq!((report.trained_on.queries, report.trained_on.iid_top1), (1, 1.0));
    assert_eq!(report.pool_size, 4);

    let md = report.to_markdown();
    assert!(md.contains("| a1 | arithmetic | yes | 2 | 50.0 | 50.0 | 50.0 | 100.0 |"), "{md}");
    assert!(md.contains("| **all** |  |  | 4 | 75.0 | 75.0 | 75.0 | 100.0 |"), "{md}");
    let json = serde_json::to_string(&report).expect("json");
    let back: EvalReport = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, report);
    let v: serde_json::Value = serde_json::from_str(&json).expect("value");
    assert_eq!(v["tasks"][0]["name"], "a1", "task fields are flattened: {json}");
    assert_eq!(v["tasks"][0]["iid_top1"], 0.5);
}

#[test]
fn eval_comparison_shows_before_after_and_difference() {
    let after = score(&hand_made()).expect("score");
    let mut worse = hand_made();
    worse.queries[0] = vec![vec![0.0, 0.1, 1.0]]; // a1 keeps only its missed query
    let before = score(&worse).expect("score");
    assert_eq!((before.held_out.queries, before.held_out.iid_top1), (2, 0.5));
    let md = after.comparison_markdown(&before);
    assert!(md.contains("| held out | 3 | 50.0 → 66.7 (+16.7) |"), "{md}");
    assert!(md.contains("| trained on | 1 | 100.0 → 100.0 (+0.0) |"), "{md}");
    assert_eq!(md.lines().count(), 5, "header, rule, three groups: {md}");
}

#[test]
fn eval_rejects_inconsistent_embeddings() {
    let mut e = hand_made();
    e.queries.pop();
    assert!(score(&e).is_err(), "a task without its query list");
    let mut e = hand_made();
    e.tasks[1].name = "a1".into();
    assert!(score(&e).is_err(), "two LoRAs with one name");
    let mut e = hand_made();
    e.queries[0][0] = vec![1.0, 0.0];
    assert!(score(&e).is_err(), "a query of the wrong dimension");
    let mut e = hand_made();
    e.queries.iter_mut().for_each(Vec::clear);
    assert!(matches!(score(&e), Err(ResearchError::Input(_))), "no query at all: a table of zeros");
}

/// Zero sizes fed to the library are typed errors naming the setting, not empty or zero results.
#[test]
fn zero_sizes_are_refused_by_the_library() {
    // (The retriever's own settings, top-k and the embedding batch size, are checked in ramole-retriever.)
    let invalid = |r: Result<(), ResearchError>, want: &str| match r {
        Err(ResearchError::InvalidArgument { name, .. }) => assert_eq!(name, want),
        other => panic!("{want}: {other:?}"),
    };
    invalid(EvalConfig { per_task: 0, ..EvalConfig::default() }.validate(), "per task");
    invalid(EvalConfig { batch_size: 0, ..EvalConfig::default() }.validate(), "batch size");
    EvalConfig::default().validate().expect("defaults are valid");
    let train = TrainConfig::default();
    train.validate().expect("defaults are valid");
    invalid(TrainConfig { epochs: 0, ..train.clone() }.validate(), "epochs");
    invalid(TrainConfig { batch_size: 0, ..train.clone() }.validate(), "batch size");
    invalid(TrainConfig { batch_size: 1, ..train.clone() }.validate(), "batch size");
    invalid(TrainConfig { pairs_per_task: 0, ..train.clone() }.validate(), "pairs per task");
    invalid(TrainConfig { max_seq_len: 1, ..train.clone() }.validate(), "max seq len");
    for lr in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        invalid(TrainConfig { lr, ..train.clone() }.validate(), "lr");
    }
    for temperature in [0.0, f64::NAN, f64::INFINITY] {
        invalid(TrainConfig { temperature, ..train.clone() }.validate(), "temperature");
    }
}

/// Four real tasks, five test inputs each, the real encoder: the pipeline runs end to end and the
/// retriever finds the right LoRA for most inputs of these clearly different tasks.
#[test]
fn eval_real_minilm_on_four_tasks() {
    let cache = ramole_assets::AssetCache::from_env().expect("cache");
    let model = cache.minilm_dir().expect("minilm");
    let tmp = tempfile::tempdir().expect("tempdir");
    let tasks = SuiteConfig::default()
        .tasks
        .into_iter()
        .filter(|t| ["addition", "subtraction", "plural", "boolq"].contains(&t.name.as_str()))
        .collect();
    let cfg = SuiteConfig { tasks, ..SuiteConfig::default() };
    build_suite(tmp.path(), &cfg).expect("suite");
    let suite = Suite::load(tmp.path()).expect("load");
    let encoder = SentenceEncoder::<Selected>::load(&model, &device()).expect("encoder");
    let report = evaluate(&suite, &encoder, &EvalConfig { per_task: 5, ..EvalConfig::default() }).expect("eval");
    eprintln!("{}", report.to_markdown());
    assert_eq!(report.overall.queries, 20);
    assert_eq!(report.pool_size, 4);
    for t in &report.tasks {
        assert!(t.scores.iid_top3 >= 0.8, "{}: the own LoRA is in the top 3 of 4 for most inputs", t.task.name);
    }
    let by_name = |n: &str| &report.tasks.iter().find(|t| t.task.name == n).expect("task").scores;
    assert!(by_name("plural").iid_top1 >= 0.8, "plural is unlike the other three");
    assert!(by_name("boolq").iid_top1 >= 0.8);
    // Without its own LoRA, an addition input's nearest LoRA is the other arithmetic task.
    assert!(by_name("addition").ood_domain_top1 >= 0.8);
    assert!(report.embed_seconds > 0.0);
}
