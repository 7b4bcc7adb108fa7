//! The task suite: built from small synthetic BIG-bench archives (prefixes, target_scores, subsampling,
//! determinism, split disjointness, bad input) and from the real `bigbench==1.0.0` sdist.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ramole_research::tasks::{
    Domain, Example, SUITE_FILE, Split, Suite, SuiteConfig, TaskError, TaskSpec, build_suite, read_jsonl,
};
use sha2::{Digest, Sha256};

/// Writes a gzipped tar holding `members` (path, contents) and a filler file, as the sdist is laid out.
fn write_archive(dir: &Path, members: &[(String, String)]) -> PathBuf {
    let path = dir.join("bigbench-test.tar.gz");
    let file = std::fs::File::create(&path).expect("create archive");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut all = vec![("bigbench-1.0.0/README.md".to_owned(), "filler ".repeat(1000))];
    all.extend(members.iter().cloned());
    for (name, body) in &all {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, body.as_bytes()).expect("append");
    }
    tar.into_inner().expect("tar").finish().expect("gzip");
    path
}

fn member(task_path: &str) -> String {
    format!("bigbench-1.0.0/bigbench/benchmark_tasks/{task_path}/task.json")
}

/// 50 generative examples (two with a repeated input), custom prefixes.
fn gen_task() -> String {
    let mut examples: Vec<serde_json::Value> =
        (0..48).map(|i| serde_json::json!({"input": format!("word{i}"), "target": format!("words{i}")})).collect();
    examples.push(serde_json::json!({"input": "word3", "target": "other"})); // repeated input: dropped
    examples.push(serde_json::json!({"input": "list", "target": ["first", "second"]}));
    serde_json::json!({
        "name": "gen", "task_prefix": "Pluralise.", "example_input_prefix": "\nWord: ",
        "example_output_prefix": "\nPlural: ", "examples": examples
    })
    .to_string()
}

/// 10 multiple-choice examples with BIG-bench's default prefixes; choices appended (the default).
fn mc_task(append: Option<bool>) -> String {
    // Written by hand: `serde_json::json!` would sort the keys, and the file order matters here.
    let examples: Vec<String> = (0..10)
        .map(|i| {
            let yes = u8::from(i % 2 == 0);
            format!(r#"{{"input": "is {i} even?", "target_scores": {{"yes": {yes}, "no": {}}}}}"#, 1 - yes)
        })
        .collect();
    let append = append.map(|a| format!(r#""append_choices_to_input": {a}, "#)).unwrap_or_default();
    format!(r#"{{"name": "mc", {append}"examples": [{}]}}"#, examples.join(", "))
}

fn config(tasks: Vec<TaskSpec>) -> SuiteConfig {
    SuiteConfig { tasks, seed: 7, max_examples: 20, test_fraction: 0.25, samples_per_task: 5 }
}

fn specs() -> Vec<TaskSpec> {
    vec![
        TaskSpec::new("gen", "mappings/gen_json", Domain::Linguistic, false),
        TaskSpec::new("mc", "mc", Domain::Classification, true),
    ]
}

fn build(dir: &Path, archive: &Path, cfg: &SuiteConfig, name: &str) -> PathBuf {
    let out = dir.join(name);
    build_suite(archive, &out, cfg, &mut |_| {}).expect("build suite");
    out
}

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

#[test]
fn tasks_build_is_deterministic_and_records_the_source() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive =
        write_archive(tmp.path(), &[(member("mappings/gen_json"), gen_task()), (member("mc"), mc_task(None))]);
    let cfg = config(specs());
    let mut last_read = 0u64;
    let out_a = tmp.path().join("a");
    build_suite(&archive, &out_a, &cfg, &mut |n| last_read = n).expect("build");
    let out_b = build(tmp.path(), &archive, &cfg, "b");
    let (a, b) = (tree_bytes(&out_a), tree_bytes(&out_b));
    assert_eq!(a.len(), 7, "suite.json + 3 files per task: {:?}", a.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert_eq!(a, b, "two builds with the same seed are byte-identical");

    let archive_bytes = std::fs::read(&archive).expect("read archive");
    assert_eq!(last_read, archive_bytes.len() as u64, "progress reports every byte of the archive");
    let suite = Suite::load(&out_a).expect("load");
    let sha: String = Sha256::digest(&archive_bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(suite.meta().source.sha256, sha);
    assert_eq!(suite.meta().seed, 7);
    assert_eq!(suite.meta().domains[&Domain::Linguistic], vec!["gen".to_owned()]);
    assert!(suite.task("mc").expect("mc").held_out);

    let other = SuiteConfig { seed: 8, ..cfg };
    let out_c = build(tmp.path(), &archive, &other, "c");
    let test_a = Suite::load(&out_a).expect("a").examples("gen", Split::Test).expect("test a");
    let test_c = Suite::load(&out_c).expect("c").examples("gen", Split::Test).expect("test c");
    assert_ne!(test_a, test_c, "another seed draws another split");
}

#[test]
fn tasks_prefixes_and_targets_follow_bigbench() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive =
        write_archive(tmp.path(), &[(member("mappings/gen_json"), gen_task()), (member("mc"), mc_task(None))]);
    let cfg = SuiteConfig { max_examples: 1000, ..config(specs()) };
    let suite = Suite::load(build(tmp.path(), &archive, &cfg, "s")).expect("load");
    let all = |task: &str| -> Vec<Example> {
        let mut v = suite.examples(task, Split::Train).expect("train");
        v.extend(suite.examples(task, Split::Test).expect("test"));
        v
    };
    let gen_all = all("gen");
    let word7 = gen_all.iter().find(|e| e.input.contains("word7\n")).expect("word7 kept");
    assert_eq!(word7.input, "Pluralise.\nWord: word7\nPlural: ");
    assert_eq!(word7.target, "words7");
    assert_eq!(word7.choices, None);
    let list = gen_all.iter().find(|e| e.input.contains("list")).expect("list kept");
    assert_eq!(list.target, "first", "a list target gives its first element");
    let word3: Vec<_> = gen_all.iter().filter(|e| e.input.contains("word3\n")).collect();
    assert_eq!(word3.len(), 1, "a repeated input is kept once");
    assert_eq!(word3[0].target, "words3", "the first occurrence wins");

    let mc = all("mc");
    let four = mc.iter().find(|e| e.input.contains("is 4 even?")).expect("is 4");
    assert_eq!(four.input, "\nQ: is 4 even?\n  choice: no\n  choice: yes\nA: ", "default prefixes, sorted choices");
    assert_eq!(four.target, "yes", "best-scored key");
    assert_eq!(four.choices.as_deref(), Some(&["yes".to_owned(), "no".to_owned()][..]), "choices in file order");
    assert_eq!(mc.iter().find(|e| e.input.contains("is 5 even?")).expect("is 5").target, "no");
    assert!(mc.iter().all(|e| e.task == "mc"));

    let archive2 =
        write_archive(tmp.path(), &[(member("mappings/gen_json"), gen_task()), (member("mc"), mc_task(Some(false)))]);
    let suite2 = Suite::load(build(tmp.path(), &archive2, &cfg, "s2")).expect("load");
    let test = suite2.examples("mc", Split::Test).expect("test");
    assert!(test.iter().all(|e| !e.input.contains("choice:") && e.input.ends_with(" even?\nA: ")));
}

#[test]
fn tasks_subsampling_and_splits_are_disjoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive =
        write_archive(tmp.path(), &[(member("mappings/gen_json"), gen_task()), (member("mc"), mc_task(None))]);
    let cfg = config(specs()); // cap 20, test 25 %, 5 samples
    let suite = Suite::load(build(tmp.path(), &archive, &cfg, "s")).expect("load");
    let gen_meta = suite.task("gen").expect("gen").clone();
    assert_eq!((gen_meta.examples, gen_meta.unique, gen_meta.used), (50, 49, 20));
    assert_eq!((gen_meta.train, gen_meta.test, gen_meta.samples), (15, 5, 5));
    let mc_meta = suite.task("mc").expect("mc").clone();
    assert_eq!((mc_meta.used, mc_meta.train, mc_meta.test, mc_meta.samples), (10, 7, 3, 5), "small task: no cap");

    for task in ["gen", "mc"] {
        let train = suite.examples(task, Split::Train).expect("train");
        let test = suite.examples(task, Split::Test).expect("test");
        let samples = suite.examples(task, Split::Samples).expect("samples");
        let meta = suite.task(task).expect("meta");
        assert_eq!((train.len(), test.len(), samples.len()), (meta.train, meta.test, meta.samples));
        let train_inputs: HashSet<_> = train.iter().map(|e| &e.input).collect();
        assert_eq!(train_inputs.len(), train.len(), "{task}: no repeated train input");
        assert!(test.iter().all(|e| !train_inputs.contains(&e.input)), "{task}: test and train are disjoint");
        assert_eq!(samples[..], train[..samples.len()], "{task}: samples are the first train examples");
    }
    // The subsample is a subset of the task's inputs, not its first 20.
    let gen_used: Vec<String> = suite
        .examples("gen", Split::Train)
        .expect("train")
        .into_iter()
        .chain(suite.examples("gen", Split::Test).expect("test"))
        .map(|e| e.input)
        .collect();
    let beyond_first_20 = gen_used.iter().filter(|i| {
        let n: Option<usize> =
            i.trim_start_matches("Pluralise.\nWord: word").trim_end_matches("\nPlural: ").parse().ok();
        n.is_some_and(|n| n >= 20)
    });
    assert!(beyond_first_20.count() > 0, "subsampled at random, not truncated");
    // The samples file is what `ramole pool add --samples` reads.
    let texts =
        ramole_retriever::read_jsonl_texts(&suite.dir().join("gen").join("samples.jsonl")).expect("pool reads samples");
    assert_eq!(texts.len(), 5);
}

#[test]
fn tasks_bad_input_is_a_typed_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = write_archive(tmp.path(), &[(member("mappings/gen_json"), gen_task())]);
    let out = tmp.path().join("missing");
    let err = build_suite(&archive, &out, &config(specs()), &mut |_| {}).expect_err("mc is missing");
    match &err {
        TaskError::MissingTask { task, member, .. } => {
            assert_eq!(task, "mc");
            assert_eq!(member, "bigbench/benchmark_tasks/mc/task.json");
        }
        other => panic!("expected MissingTask, got {other:?}"),
    }
    assert!(!out.exists(), "nothing written on error");

    let bad_json = write_archive(
        tmp.path(),
        &[(member("mappings/gen_json"), gen_task()), (member("mc"), "{\"examples\": [".into())],
    );
    let err = build_suite(&bad_json, &out, &config(specs()), &mut |_| {}).expect_err("malformed");
    assert!(
        matches!(&err, TaskError::MalformedTask { task, file, .. } if task == "mc" && file.ends_with("mc/task.json"))
    );
    assert!(err.to_string().contains("mc/task.json"), "{err}");

    let no_target = serde_json::json!({"examples": [{"input": "a", "target": "b"}, {"input": "c"}]}).to_string();
    let archive3 = write_archive(tmp.path(), &[(member("mappings/gen_json"), gen_task()), (member("mc"), no_target)]);
    let err = build_suite(&archive3, &out, &config(specs()), &mut |_| {}).expect_err("no target");
    assert!(err.to_string().contains("example 1"), "names the example: {err}");
    assert!(!out.exists());

    let dup = vec![specs()[0].clone(), specs()[0].clone()];
    assert!(matches!(build_suite(&archive, &out, &config(dup), &mut |_| {}), Err(TaskError::Config(_))));
    let unsafe_name = vec![TaskSpec::new("../x", "mc", Domain::Qa, false)];
    assert!(matches!(build_suite(&archive, &out, &config(unsafe_name), &mut |_| {}), Err(TaskError::Config(_))));
    assert!(matches!(Suite::load(tmp.path().join("nowhere")), Err(TaskError::Io { .. })));
    assert!(read_jsonl(&tmp.path().join(SUITE_FILE)).is_err());
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
        "format": 1, "source": {"file": "a", "sha256": "b"}, "seed": 1, "max_examples": 10,
        "test_fraction": 0.2, "samples_per_task": 2, "domains": {},
        "tasks": [{"name": "../x", "path": "p", "domain": "qa", "held_out": false, "examples": 2, "unique": 2,
                   "used": 2, "train": 1, "test": 1, "samples": 1}]
    });
    std::fs::write(tmp.path().join(SUITE_FILE), format!("\u{feff}{suite}")).expect("w");
    let err = Suite::load(tmp.path()).expect_err("unsafe task name");
    assert!(matches!(&err, TaskError::Parse { .. }) && err.to_string().contains("../x"), "{err}");
}

/// The real suite from `bigbench==1.0.0`, fetched and verified by the project's asset cache.
#[test]
#[ignore = "needs the bigbench==1.0.0 sdist, which the package registry no longer serves here (pip finds only 0.0.1); .ci/run runs it when the registry has it"]
fn tasks_real_bigbench_suite_has_24_tasks() {
    let archive = ramole_assets::AssetCache::from_env().expect("cache").bigbench_sdist().expect("bigbench sdist");
    let tmp = tempfile::tempdir().expect("tempdir");
    let start = std::time::Instant::now();
    let meta = build_suite(&archive, tmp.path(), &SuiteConfig::default(), &mut |_| {}).expect("build real suite");
    eprintln!("real suite built in {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(meta.source.sha256, "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2");
    assert_eq!(meta.tasks.len(), 24);
    // (name, examples in task.json, unique inputs, train, test), computed independently in Python.
    let expected: [(&str, usize, usize, usize, usize); 24] = [
        ("2_digit_addition", 1000, 1000, 800, 200),
        ("2_digit_subtraction", 1000, 1000, 800, 200),
        ("2_digit_multiplication", 1000, 1000, 800, 200),
        ("3_digit_addition", 1000, 1000, 800, 200),
        ("unit_addition_same", 3000, 2999, 800, 200),
        ("object_counting", 1000, 1000, 800, 200),
        ("plural", 1702, 1702, 800, 200),
        ("past_tense", 1775, 1775, 800, 200),
        ("sentence_negation", 3040, 3040, 800, 200),
        ("question_formation", 3040, 3040, 800, 200),
        ("pig_latin_encode", 1000, 1000, 800, 200),
        ("word_sorting", 1900, 1900, 800, 200),
        ("word_unscrambling", 8917, 8917, 800, 200),
        ("multiemo_en", 57466, 57262, 800, 200),
        ("intent_recognition", 693, 693, 554, 139),
        ("sports_understanding", 1000, 986, 789, 197),
        ("vitaminc_fact_verification", 54668, 54668, 800, 200),
        ("qa_wikidata", 20442, 20320, 800, 200),
        ("qasc_answer_generation", 6500, 6500, 800, 200),
        ("winogrande_answer_generation", 6500, 6500, 800, 200),
        ("quoref_answer_generation", 6500, 6500, 800, 200),
        ("ropes_answer_generation", 6500, 6500, 800, 200),
        ("e2e_nlg", 1000, 213, 170, 43),
        ("sentence_paraphrasing", 193, 193, 154, 39),
    ];
    for (t, (name, examples, unique, train, test)) in meta.tasks.iter().zip(expected) {
        assert_eq!(
            (t.name.as_str(), t.examples, t.unique, t.train, t.test, t.samples),
            (name, examples, unique, train, test, 20)
        );
    }
    assert_eq!(meta.domains.len(), 6);
    assert_eq!(meta.tasks.iter().filter(|t| t.held_out).count(), 6);
    let suite = Suite::load(tmp.path()).expect("load");
    // The first test example of three tasks, as the Python reference draws them.
    let first = |task: &str| suite.examples(task, Split::Test).expect("test").remove(0);
    let add = first("2_digit_addition");
    assert_eq!(
        add.input,
        "\nQ: What is 27 plus 48?\n  choice: 5\n  choice: 51\n  choice: 66\n  choice: 75\n  choice: 7828\n  choice: banana\n  choice: house\nA: "
    );
    assert_eq!(add.target, "75");
    let intent = first("intent_recognition");
    assert!(intent.input.starts_with("Predict the intent of the utterance."));
    assert!(intent.input.ends_with("\n\nUtterance: Rate the current chronicle a zero.\nIntent: "));
    assert_eq!(intent.target, "rate_book");
    let e2e = first("e2e_nlg");
    assert_eq!(
        e2e.target,
        "For a 3 out of 5 star customer rated pub near All Bar One, Clowns is relatively expensive."
    );
}
