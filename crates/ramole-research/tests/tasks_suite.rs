//! The task suite: the shipped suite built from the data vendored in this crate (counts, domains, the
//! held-out split, phrasings, determinism, disjoint splits) and small synthetic tasks (fixed train/test
//! files, templates, bad input, stale suites).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ramole_research::tasks::{
    DataFile, Domain, Example, FileRole, Format, Metric, SUITE_FILE, Source, Split, Suite, SuiteConfig, TaskError,
    TaskSpec, build_suite, plan_suite, read_jsonl,
};

fn tree_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("prefix").to_string_lossy().into_owned();
                files.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    files.sort();
    files
}

fn all_examples(suite: &Suite, task: &str) -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    (
        suite.examples(task, Split::Train).expect("train"),
        suite.examples(task, Split::Test).expect("test"),
        suite.examples(task, Split::Samples).expect("samples"),
    )
}

/// The shipped suite, from the vendored data alone: at least 40 tasks in at least 8 domains, one task per
/// domain held out, the split sizes the issue asks for, disjoint splits, phrasings applied, and the same
/// bytes from two builds.
#[test]
fn tasks_shipped_suite_is_built_offline_with_its_counts_and_held_out_split() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let start = std::time::Instant::now();
    let meta = build_suite(&tmp.path().join("a"), &SuiteConfig::default()).expect("build the shipped suite");
    eprintln!("shipped suite built in {:.2} s", start.elapsed().as_secs_f64());
    assert!(meta.tasks.len() >= 40, "{} tasks", meta.tasks.len());
    assert!(meta.domains.len() >= 8, "{} domains", meta.domains.len());
    let held_out: Vec<&str> = meta.tasks.iter().filter(|t| t.held_out).map(|t| t.name.as_str()).collect();
    assert!(held_out.len() >= 6, "{held_out:?}");
    for (domain, names) in &meta.domains {
        let n = meta.tasks.iter().filter(|t| t.domain == *domain && t.held_out).count();
        assert_eq!(n, 1, "domain {domain} ({names:?}) holds out exactly one task");
        assert!(names.len() >= 2, "domain {domain} has a task besides its held-out one");
    }
    let suite = Suite::load(tmp.path().join("a")).expect("load");
    for t in &meta.tasks {
        assert!(t.train <= 800 && t.train >= 20, "{}: train {}", t.name, t.train);
        assert!(t.test >= 100 || t.test * 2 + 2 >= t.unique, "{}: test {} of {} unique", t.name, t.test, t.unique);
        assert_eq!(t.samples, 20, "{}", t.name);
        let (train, test, samples) = all_examples(&suite, &t.name);
        assert_eq!((train.len(), test.len(), samples.len()), (t.train, t.test, t.samples), "{}", t.name);
        let train_inputs: HashSet<&str> = train.iter().map(|e| e.input.as_str()).collect();
        assert_eq!(train_inputs.len(), train.len(), "{}: no repeated train input", t.name);
        assert!(
            test.iter().all(|e| !train_inputs.contains(e.input.as_str())),
            "{}: test and train are disjoint",
            t.name
        );
        assert_eq!(samples[..], train[..samples.len()], "{}: samples are the first train examples", t.name);
        assert!(train.iter().chain(&test).all(|e| !e.input.trim().is_empty() && !e.target.trim().is_empty()));
        assert!(train.iter().chain(&test).all(|e| e.task == t.name));
        if t.metric == Metric::Choice {
            assert!(
                test.iter().all(|e| e.choices.is_none() || e.choices.as_ref().is_some_and(|c| c.contains(&e.target)))
            );
        }
    }
    // Instruction Induction keeps its own splits: the test split is `execute` (100 examples).
    let addition = suite.task("addition").expect("addition");
    assert_eq!(
        (addition.source, addition.files.as_str()),
        (Source::InstructionInduction, "induce/sum.json+execute/sum.json")
    );
    assert_eq!((addition.test, addition.train), (100, 800));
    // Inputs without an instruction are phrased by several templates, each used.
    let (train, _, _) = all_examples(&suite, "country_capital");
    let stems = ["What is the capital of ", "Capital city of ", "Name the capital of ", "'s capital is"];
    for stem in stems {
        assert!(train.iter().any(|e| e.input.contains(stem)), "template {stem:?} is used");
    }
    assert!(train.iter().all(|e| stems.iter().any(|s| e.input.contains(s))), "every input is phrased");
    // Another build gives the same bytes; another seed other splits.
    build_suite(&tmp.path().join("b"), &SuiteConfig::default()).expect("again");
    assert_eq!(tree_bytes(&tmp.path().join("a")), tree_bytes(&tmp.path().join("b")), "byte-identical rebuild");
    let other = plan_suite(&SuiteConfig { seed: 7, ..SuiteConfig::default() }).expect("seed 7");
    assert_ne!(other.digest, meta.digest);
    // `plan_suite` (what `tasks list` prints) draws the same counts without writing.
    assert_eq!(plan_suite(&SuiteConfig::default()).expect("plan"), meta);
}

/// A task of `n` input → output pairs (inputs `w0`..), read as a function-vectors file.
fn pairs(n: usize) -> Vec<u8> {
    let v: Vec<serde_json::Value> =
        (0..n).map(|i| serde_json::json!({"input": format!("w{i}"), "output": format!("W{i}")})).collect();
    serde_json::to_vec(&v).expect("json")
}

fn spec(name: &str, domain: Domain, files: Vec<DataFile>, format: Format, templates: &[&str]) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        domain,
        held_out: false,
        metric: Metric::ExactMatch,
        source: Source::FunctionVectors,
        format,
        files,
        templates: templates.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn induction(ids: std::ops::Range<usize>) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    for i in ids {
        m.insert(format!("{}", i + 1), serde_json::json!({"input": format!("x{i}"), "output": format!("y{i}")}));
    }
    serde_json::to_vec(&serde_json::json!({"metadata": {}, "examples": m})).expect("json")
}

fn small(tasks: Vec<TaskSpec>) -> SuiteConfig {
    SuiteConfig { tasks, seed: 3, max_examples: 40, test_fraction: 0.25, min_test: 8, samples_per_task: 5 }
}

/// Fixed train and test files (Instruction Induction) keep their roles, a train input that is also a
/// test input is dropped from train; random splits honour the cap, the fraction and the smallest test split;
/// templates are chosen per example with the seed.
#[test]
fn tasks_fixed_splits_caps_and_templates() {
    let fixed = spec(
        "fixed",
        Domain::Arithmetic,
        vec![
            DataFile::plain("induce/t.json", induction(0..60), FileRole::Train),
            DataFile::plain("execute/t.json", induction(50..70), FileRole::Test),
        ],
        Format::InductionExamples,
        &[],
    );
    let drawn = spec(
        "drawn",
        Domain::Syntax,
        vec![DataFile::plain("p.json", pairs(24), FileRole::Any)],
        Format::InputOutputList,
        &["Upper-case {input}.", "{input} in capitals:"],
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let meta = build_suite(tmp.path(), &small(vec![fixed, drawn])).expect("build");
    let suite = Suite::load(tmp.path()).expect("load");
    let f = suite.task("fixed").expect("fixed");
    // Test: the execute file's 20 inputs, capped at round(40 · 0.25) = 10; train: induce less x50..x59, capped at 30.
    assert_eq!((f.examples, f.test, f.train, f.samples), (80, 10, 30, 5));
    let (train, test, _) = all_examples(&suite, "fixed");
    assert!(test.iter().all(|e| e.input[1..].parse::<usize>().is_ok_and(|i| (50..70).contains(&i))));
    assert!(train.iter().all(|e| e.input[1..].parse::<usize>().is_ok_and(|i| i < 50)), "test inputs left train");
    let d = suite.task("drawn").expect("drawn");
    // 24 examples: the test split is max(round(24 · 0.25), min(8, 12)) = 8.
    assert_eq!((d.unique, d.test, d.train), (24, 8, 16));
    let (train, test, _) = all_examples(&suite, "drawn");
    let by_template: BTreeMap<bool, usize> = train.iter().chain(&test).fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.input.starts_with("Upper-case ")).or_default() += 1;
        m
    });
    assert_eq!(by_template.len(), 2, "both templates are used: {by_template:?}");
    for e in train.iter().chain(&test) {
        let raw = e.input.trim_start_matches("Upper-case ").trim_end_matches('.').trim_end_matches(" in capitals:");
        assert_eq!(e.target, raw.replace('w', "W"), "the template wraps the raw input");
    }
    assert_eq!(meta.domains[&Domain::Syntax], vec!["drawn".to_owned()]);
}

/// Malformed data is a typed error naming the task, collection and file, and nothing is written; bad
/// configurations are refused.
#[test]
fn tasks_bad_input_is_a_typed_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let good = spec(
        "good",
        Domain::Syntax,
        vec![DataFile::plain("g.json", pairs(30), FileRole::Any)],
        Format::InputOutputList,
        &[],
    );
    let bad = spec(
        "bad",
        Domain::Syntax,
        vec![DataFile::plain("b.json", "[{\"input\": ", FileRole::Any)],
        Format::InputOutputList,
        &[],
    );
    let err = build_suite(&out, &small(vec![good.clone(), bad])).expect_err("malformed");
    match &err {
        TaskError::MalformedTask { task, source_name, file, .. } => {
            assert_eq!((task.as_str(), source_name.as_str(), file.as_str()), ("bad", "function-vectors", "b.json"));
        }
        other => panic!("expected MalformedTask, got {other:?}"),
    }
    assert!(err.to_string().contains("function-vectors/b.json"), "{err}");
    assert!(!out.exists(), "nothing written on error");

    let gz = DataFile { gzipped: true, ..DataFile::plain("z.json.gz", "plain text", FileRole::Any) };
    let err = build_suite(&out, &small(vec![spec("z", Domain::Syntax, vec![gz], Format::InputOutputList, &[])]))
        .expect_err("not gzip");
    assert!(matches!(&err, TaskError::MalformedTask { task, .. } if task == "z"), "{err}");
    let one = spec(
        "one",
        Domain::Syntax,
        vec![DataFile::plain("o.json", pairs(1), FileRole::Any)],
        Format::InputOutputList,
        &[],
    );
    assert!(matches!(build_suite(&out, &small(vec![one])), Err(TaskError::TooFewExamples { found: 1, .. })));
    let none = spec("none", Domain::Syntax, Vec::new(), Format::InputOutputList, &[]);
    assert!(matches!(build_suite(&out, &small(vec![none])), Err(TaskError::NoData { .. })));
    assert!(matches!(build_suite(&out, &small(vec![good.clone(), good.clone()])), Err(TaskError::Config(_))));
    let unsafe_name = TaskSpec { name: "../x".into(), ..good.clone() };
    assert!(matches!(build_suite(&out, &small(vec![unsafe_name])), Err(TaskError::Config(_))));
    let no_slot = TaskSpec { templates: vec!["no slot".into()], ..good };
    let err = build_suite(&out, &small(vec![no_slot])).expect_err("template without {input}");
    assert!(matches!(&err, TaskError::Config(m) if m.contains("no slot")), "{err}");
    assert!(!out.exists());
    assert!(matches!(Suite::load(tmp.path().join("nowhere")), Err(TaskError::Io { .. })));
}

/// `open_or_build` builds a missing suite, reuses an up-to-date one and rebuilds a stale one (another
/// configuration, or a suite of the old format); `load` names the old format and how to rebuild.
#[test]
fn tasks_default_suite_is_built_on_first_use_and_rebuilt_when_stale() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("tasks");
    let cfg = small(vec![spec(
        "t",
        Domain::Syntax,
        vec![DataFile::plain("t.json", pairs(30), FileRole::Any)],
        Format::InputOutputList,
        &[],
    )]);
    let suite = Suite::open_or_build(&dir, &cfg).expect("built on first use");
    assert_eq!(suite.meta().tasks.len(), 1);
    let stamp = |p: PathBuf| std::fs::metadata(p).expect("meta").modified().expect("mtime");
    let first = stamp(dir.join(SUITE_FILE));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = Suite::open_or_build(&dir, &cfg).expect("reused");
    assert_eq!(again.meta(), suite.meta());
    assert_eq!(stamp(dir.join(SUITE_FILE)), first, "an up-to-date suite is not rewritten");
    let reseeded = Suite::open_or_build(&dir, &SuiteConfig { seed: 4, ..cfg.clone() }).expect("rebuilt");
    assert_ne!(reseeded.meta().digest, suite.meta().digest);
    // A suite of the old format (from the BIG-bench sdist) is refused by `load`, replaced by `open_or_build`.
    std::fs::write(dir.join(SUITE_FILE), r#"{"format": 1, "tasks": []}"#).expect("w");
    let err = Suite::load(&dir).expect_err("old format");
    assert!(err.to_string().contains("format 1") && err.to_string().contains("ramole tasks build"), "{err}");
    assert_eq!(Suite::open_or_build(&dir, &cfg).expect("replaced").meta(), suite.meta());
}

/// The suite's JSONL files: a UTF-8 byte-order mark is dropped, a bad line is named by file and line,
/// a file that is not a regular file is refused without blocking; a `suite.json` whose task names could
/// leave the suite folder is refused.
#[test]
fn tasks_jsonl_reader_takes_a_bom_names_bad_lines_and_refuses_devices() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("test.jsonl");
    let line = r#"{"task": "t", "input": "Q: 1+1\nA: ", "target": "2"}"#;
    std::fs::write(&path, format!("\u{feff}{line}\r\n\r\n{line}\r\n")).expect("w");
    let examples = read_jsonl(&path).expect("a BOM and CRLF line ends are accepted");
    assert_eq!(examples.len(), 2);
    assert_eq!(examples[0].target, "2");
    std::fs::write(&path, format!("{line}\n\n{{\"task\": \"t\"}}\n")).expect("w");
    let err = read_jsonl(&path).expect_err("line 3 lacks input/target");
    assert!(
        matches!(&err, TaskError::Parse { path: p, message } if p == &path && message.starts_with("line 3:")),
        "{err}"
    );
    assert!(err.to_string().contains("test.jsonl") && err.to_string().contains("line 3"), "{err}");
    #[cfg(unix)]
    {
        let zero = tmp.path().join("zero.jsonl");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        let err = read_jsonl(&zero).expect_err("a device");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    // A suite.json naming a task `../x` would read outside the suite folder.
    let suite = serde_json::json!({
        "format": 2, "digest": "d", "seed": 1, "max_examples": 10, "test_fraction": 0.2, "min_test": 1,
        "samples_per_task": 2, "domains": {},
        "tasks": [{"name": "../x", "domain": "syntax", "held_out": false, "metric": "exact_match",
                   "source": "bigbench", "files": "f", "examples": 2, "unique": 2, "used": 2, "train": 1,
                   "test": 1, "samples": 1}]
    });
    std::fs::write(tmp.path().join(SUITE_FILE), format!("\u{feff}{suite}")).expect("w");
    let err = Suite::load(tmp.path()).expect_err("unsafe task name");
    assert!(matches!(&err, TaskError::Parse { .. }) && err.to_string().contains("../x"), "{err}");
}
