//! The task suite: 24 BIG-bench tasks extracted from the PyPI sdist `bigbench==1.0.0`.
//!
//! [`build_suite`] streams the sdist (a 358 MB `tar.gz`) once with `flate2` + `tar`, never unpacking it to
//! disk, keeps only the `task.json` of the tasks in [`SuiteConfig::tasks`], and writes for each task
//! `<out>/<task>/{train,test,samples}.jsonl` plus `<out>/suite.json` (tasks, domains, counts, seed, the
//! archive's sha256). [`Suite::load`] reads it back.
//!
//! # How an example becomes a JSONL line
//! Each line is an [`Example`] `{task, input, target, choices?}`. The `input` is BIG-bench's own zero-shot
//! prompt, composed as `bigbench/api/json_task.py` does:
//!
//! ```text
//! input = task_prefix + example_input_prefix + raw_input [+ choice_prefix + choice_prefix.join(choices)]
//!         + example_output_prefix
//! ```
//!
//! with the task's defaults when a field is absent: `task_prefix` `""`, `example_input_prefix` `"\nQ: "`,
//! `example_output_prefix` `"\nA: "`, `choice_prefix` `"\n  choice: "`. The bracketed part is present only for
//! examples with `target_scores` when the task's `append_choices_to_input` is true (BIG-bench's default);
//! the choices are listed sorted (BIG-bench lists a numpy permutation of the sorted keys). The `target` is
//! the example's `target` (the first one when it is a list) or, with only `target_scores`, the best-scored
//! key (the first in file order on a tie, as BIG-bench does); `choices` are the `target_scores` keys in file
//! order, absent when the example has none.
//!
//! # How the splits are drawn
//! 1. Examples whose composed `input` repeats an earlier one are dropped (the first is kept), so no input is in
//!    both train and test.
//! 2. The unique examples are ordered by the SHA-256 of `"{seed}:{task}:{index}"` (a seeded shuffle that
//!    depends on nothing but these three values) and the first [`SuiteConfig::max_examples`] are kept: large
//!    tasks are subsampled uniformly at random.
//! 3. Of those `n`, the first `round(n · test_fraction)` (at least 1) are the test split, the rest the train
//!    split; `samples` are the first [`SuiteConfig::samples_per_task`] train examples (the inputs that stand
//!    for the task's LoRA in the pool). All three files keep that shuffled order.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use ramole_core::fs::{MAX_TEXT_BYTES, read_text};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// Default seed of the suite's splits.
pub const DEFAULT_SEED: u64 = 42;
/// Default cap on the examples kept per task.
pub const DEFAULT_MAX_EXAMPLES: usize = 1000;
/// Default fraction of a task's kept examples that form its test split.
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;
/// Default number of sample inputs per task (the paper uses 20).
pub const DEFAULT_SAMPLES_PER_TASK: usize = 20;
/// Name of the suite's metadata file.
pub const SUITE_FILE: &str = "suite.json";
/// Version of the suite's on-disk format, written in [`SuiteMeta::format`].
pub const SUITE_FORMAT: u32 = 1;

/// Errors of building or reading the task suite.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// An I/O error on a file of the suite or on the archive.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A task of the configuration that the archive does not hold.
    #[error("task `{task}`: {member} is not in the archive {archive}")]
    MissingTask {
        /// The task's name.
        task: String,
        /// The archive member that was looked for.
        member: String,
        /// The archive.
        archive: PathBuf,
    },
    /// A `task.json` that cannot be parsed or whose examples are unusable.
    #[error("task `{task}`: malformed {file}: {message}")]
    MalformedTask {
        /// The task's name.
        task: String,
        /// The `task.json` (its path inside the archive).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A task with too few usable examples for a train and a test split.
    #[error("task `{task}`: {found} usable example(s), at least 2 are needed for a train and a test split")]
    TooFewExamples {
        /// The task's name.
        task: String,
        /// How many unique examples it has.
        found: usize,
    },
    /// A suite configuration that cannot work (duplicate or unsafe task names, bad fractions).
    #[error("invalid suite configuration: {0}")]
    Config(String),
    /// A suite folder whose `suite.json` or JSONL files cannot be parsed.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A task name that the suite does not have.
    #[error("the suite in {dir} has no task `{task}`")]
    UnknownTask {
        /// The suite folder.
        dir: PathBuf,
        /// The name asked for.
        task: String,
    },
}

impl TaskError {
    fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// The kind of task, declared per task: OOD retrieval counts a top-1 LoRA of the same domain as a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    /// Arithmetic and counting.
    Arithmetic,
    /// Linguistic mappings (plural, tense, negation, question formation).
    Linguistic,
    /// Games on letters and words (pig latin, sorting, unscrambling).
    WordGames,
    /// Classification and natural language inference (sentiment, intent, plausibility, fact verification).
    Classification,
    /// Question answering.
    Qa,
    /// Text generation (data-to-text, paraphrasing).
    Generation,
}

impl Domain {
    /// The domain's name as written in `suite.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Arithmetic => "arithmetic",
            Self::Linguistic => "linguistic",
            Self::WordGames => "word_games",
            Self::Classification => "classification",
            Self::Qa => "qa",
            Self::Generation => "generation",
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task of the suite: its name, where it lives in BIG-bench, its domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// Name of the task in the suite (a safe file name: the task's folder and its LoRA's name).
    pub name: String,
    /// Its folder under `bigbench/benchmark_tasks/` (subtasks: `task/subtask`).
    pub path: String,
    /// Its domain.
    pub domain: Domain,
    /// Whether retriever training leaves it out (it is then "unseen" in the before/after evaluation).
    pub held_out: bool,
}

impl TaskSpec {
    /// A task spec.
    pub fn new(name: &str, path: &str, domain: Domain, held_out: bool) -> Self {
        Self { name: name.to_owned(), path: path.to_owned(), domain, held_out }
    }

    /// The 24 tasks of the suite (../shared/ASSETS.md), with their domains and the six held out of
    /// retriever training, one per domain: `object_counting`, `past_tense`, `word_sorting`,
    /// `sports_understanding`, `winogrande_answer_generation`, `e2e_nlg`.
    pub fn bigbench_24() -> Vec<Self> {
        use Domain::*;
        let table: [(&str, &str, Domain, bool); 24] = [
            ("2_digit_addition", "arithmetic/2_digit_addition", Arithmetic, false),
            ("2_digit_subtraction", "arithmetic/2_digit_subtraction", Arithmetic, false),
            ("2_digit_multiplication", "arithmetic/2_digit_multiplication", Arithmetic, false),
            ("3_digit_addition", "arithmetic/3_digit_addition", Arithmetic, false),
            ("unit_addition_same", "unit_conversion/unit_addition_same", Arithmetic, false),
            ("object_counting", "object_counting", Arithmetic, true),
            ("plural", "linguistic_mappings/plural_json", Linguistic, false),
            ("past_tense", "linguistic_mappings/past_tense_json", Linguistic, true),
            ("sentence_negation", "linguistic_mappings/sentence_negation_json", Linguistic, false),
            ("question_formation", "linguistic_mappings/question_formation_json", Linguistic, false),
            ("pig_latin_encode", "language_games/pig_latin_encode", WordGames, false),
            ("word_sorting", "word_sorting", WordGames, true),
            ("word_unscrambling", "word_unscrambling", WordGames, false),
            ("multiemo_en", "multiemo/all_sentence_en", Classification, false),
            ("intent_recognition", "intent_recognition", Classification, false),
            ("sports_understanding", "sports_understanding", Classification, true),
            ("vitaminc_fact_verification", "vitaminc_fact_verification", Classification, false),
            ("qa_wikidata", "qa_wikidata", Qa, false),
            ("qasc_answer_generation", "natural_instructions/subtask041_qasc_answer_generation", Qa, false),
            ("winogrande_answer_generation", "natural_instructions/subtask033_winogrande_answer_generation", Qa, true),
            ("quoref_answer_generation", "natural_instructions/subtask002_quoref_answer_generation", Qa, false),
            ("ropes_answer_generation", "natural_instructions/subtask061_ropes_answer_generation", Qa, false),
            ("e2e_nlg", "gem/e2e_nlg", Generation, true),
            (
                "sentence_paraphrasing",
                "natural_instructions/subtask045_miscellaneous_sentence_paraphrasing",
                Generation,
                false,
            ),
        ];
        table.iter().map(|&(name, path, domain, held_out)| Self::new(name, path, domain, held_out)).collect()
    }

    /// The archive member of the task's `task.json`, relative to the sdist's top folder.
    pub fn member(&self) -> String {
        format!("bigbench/benchmark_tasks/{}/task.json", self.path)
    }
}

/// How the suite is built.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// The tasks to extract.
    pub tasks: Vec<TaskSpec>,
    /// Seed of the subsampling and of the splits.
    pub seed: u64,
    /// Cap on the examples kept per task (larger tasks are subsampled).
    pub max_examples: usize,
    /// Fraction of the kept examples that form the test split.
    pub test_fraction: f64,
    /// Sample inputs per task, taken from its train split.
    pub samples_per_task: usize,
}

impl Default for SuiteConfig {
    /// The 24-task suite with the default seed, cap (1,000), test fraction (0.2) and 20 samples per task.
    fn default() -> Self {
        Self {
            tasks: TaskSpec::bigbench_24(),
            seed: DEFAULT_SEED,
            max_examples: DEFAULT_MAX_EXAMPLES,
            test_fraction: DEFAULT_TEST_FRACTION,
            samples_per_task: DEFAULT_SAMPLES_PER_TASK,
        }
    }
}

impl SuiteConfig {
    fn validate(&self) -> Result<(), TaskError> {
        if self.tasks.is_empty() {
            return Err(TaskError::Config("no tasks".into()));
        }
        let mut seen = HashSet::new();
        for t in &self.tasks {
            if !is_safe_name(&t.name) {
                return Err(TaskError::Config(format!("task name `{}` is not a safe file name", t.name)));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(TaskError::Config(format!("task name `{}` appears twice", t.name)));
            }
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return Err(TaskError::Config(format!("test fraction {} is not in (0, 1)", self.test_fraction)));
        }
        if self.max_examples < 2 || self.samples_per_task == 0 {
            return Err(TaskError::Config(format!(
                "max examples {} (needs ≥ 2) / samples per task {} (needs ≥ 1)",
                self.max_examples, self.samples_per_task
            )));
        }
        Ok(())
    }
}

fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// One example of the suite: a line of `train.jsonl`, `test.jsonl` or `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The task's name.
    pub task: String,
    /// The prompt, with the task's own prefixes (see the module docs).
    pub input: String,
    /// The expected answer.
    pub target: String,
    /// The choices of a multiple-choice example, in file order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
}

/// One of a task's three files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `train.jsonl`.
    Train,
    /// `test.jsonl`.
    Test,
    /// `samples.jsonl`: the first train inputs, which stand for the task's LoRA in the pool.
    Samples,
}

impl Split {
    /// The split's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Train => "train.jsonl",
            Self::Test => "test.jsonl",
            Self::Samples => "samples.jsonl",
        }
    }
}

/// Where the suite's examples came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// The archive's file name.
    pub file: String,
    /// The archive's sha256 (hex).
    pub sha256: String,
}

/// One task as recorded in `suite.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// The task's name.
    pub name: String,
    /// Its folder under `bigbench/benchmark_tasks/`.
    pub path: String,
    /// Its domain.
    pub domain: Domain,
    /// Whether retriever training leaves it out.
    pub held_out: bool,
    /// Examples in its `task.json`.
    pub examples: usize,
    /// Examples left after dropping repeated inputs.
    pub unique: usize,
    /// Examples kept (at most the cap).
    pub used: usize,
    /// Examples in `train.jsonl`.
    pub train: usize,
    /// Examples in `test.jsonl`.
    pub test: usize,
    /// Examples in `samples.jsonl`.
    pub samples: usize,
}

/// The contents of `suite.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteMeta {
    /// On-disk format version ([`SUITE_FORMAT`]).
    pub format: u32,
    /// The archive the suite was built from.
    pub source: SourceMeta,
    /// Seed of the subsampling and splits.
    pub seed: u64,
    /// Cap on the examples kept per task.
    pub max_examples: usize,
    /// Fraction of kept examples in the test split.
    pub test_fraction: f64,
    /// Sample inputs per task.
    pub samples_per_task: usize,
    /// Task names by domain.
    pub domains: BTreeMap<Domain, Vec<String>>,
    /// The tasks, in configuration order.
    pub tasks: Vec<TaskMeta>,
}

/// A suite on disk.
#[derive(Debug, Clone)]
pub struct Suite {
    dir: PathBuf,
    meta: SuiteMeta,
}

impl Suite {
    /// Reads `<dir>/suite.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, TaskError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(SUITE_FILE);
        let text = read_text(&path, MAX_TEXT_BYTES).map_err(|e| TaskError::io(&path, e))?;
        let meta: SuiteMeta =
            serde_json::from_str(&text).map_err(|e| TaskError::Parse { path: path.clone(), message: e.to_string() })?;
        if meta.format != SUITE_FORMAT {
            return Err(TaskError::Parse {
                path,
                message: format!("format {} is not the supported {SUITE_FORMAT}", meta.format),
            });
        }
        // Task names become folder names below `dir`: refuse anything that could leave it.
        let mut seen = HashSet::new();
        for t in &meta.tasks {
            if !is_safe_name(&t.name) || !seen.insert(t.name.as_str()) {
                return Err(TaskError::Parse {
                    path,
                    message: format!("task name `{}` is not a safe file name or appears twice", t.name),
                });
            }
        }
        Ok(Self { dir, meta })
    }

    /// The suite's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The contents of `suite.json`.
    pub fn meta(&self) -> &SuiteMeta {
        &self.meta
    }

    /// The task called `name`.
    pub fn task(&self, name: &str) -> Result<&TaskMeta, TaskError> {
        self.meta
            .tasks
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| TaskError::UnknownTask { dir: self.dir.clone(), task: name.to_owned() })
    }

    /// The examples of one split of task `name`, in file order.
    pub fn examples(&self, name: &str, split: Split) -> Result<Vec<Example>, TaskError> {
        let task = self.task(name)?;
        let path = self.dir.join(&task.name).join(split.file_name());
        read_jsonl(&path)
    }
}

/// Reads a JSONL file of [`Example`]s, through [`ramole_core::fs::read_text`] (a regular file of at
/// most [`MAX_TEXT_BYTES`], a leading UTF-8 byte-order mark dropped). A bad line is a
/// [`TaskError::Parse`] naming the file and the line number.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>, TaskError> {
    let text = read_text(path, MAX_TEXT_BYTES).map_err(|e| TaskError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ex: Example = serde_json::from_str(line)
            .map_err(|e| TaskError::Parse { path: path.to_path_buf(), message: format!("line {}: {e}", i + 1) })?;
        out.push(ex);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// Parsing task.json

/// `target_scores`, keeping the file's key order (BIG-bench breaks ties by it).
#[derive(Debug, Default)]
struct OrderedScores(Vec<(String, f64)>);

impl<'de> Deserialize<'de> for OrderedScores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedScores;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of choice -> score")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, s)) = map.next_entry::<String, f64>()? {
                    v.push((k, s));
                }
                Ok(OrderedScores(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawTarget {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct RawExample {
    input: String,
    #[serde(default)]
    target: Option<RawTarget>,
    #[serde(default)]
    target_scores: Option<OrderedScores>,
}

#[derive(Debug, Deserialize)]
struct RawTask {
    examples: Vec<RawExample>,
    #[serde(default)]
    task_prefix: Option<String>,
    #[serde(default)]
    example_input_prefix: Option<String>,
    #[serde(default)]
    example_output_prefix: Option<String>,
    #[serde(default)]
    choice_prefix: Option<String>,
    #[serde(default)]
    append_choices_to_input: Option<bool>,
}

/// The prompt format of one task, with BIG-bench's defaults filled in.
struct PromptFormat {
    task_prefix: String,
    input_prefix: String,
    output_prefix: String,
    choice_prefix: String,
    append_choices: bool,
}

impl PromptFormat {
    fn of(raw: &RawTask) -> Self {
        let or = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
        Self {
            task_prefix: or(&raw.task_prefix, ""),
            input_prefix: or(&raw.example_input_prefix, "\nQ: "),
            output_prefix: or(&raw.example_output_prefix, "\nA: "),
            choice_prefix: or(&raw.choice_prefix, "\n  choice: "),
            append_choices: raw.append_choices_to_input.unwrap_or(true),
        }
    }

    /// Composes one example (see the module docs); `Err` says what is wrong with it.
    fn compose(&self, task: &str, ex: &RawExample) -> Result<Example, String> {
        let mut input = format!("{}{}{}", self.task_prefix, self.input_prefix, ex.input);
        if let (Some(scores), true) = (&ex.target_scores, self.append_choices) {
            let mut keys: Vec<&str> = scores.0.iter().map(|(k, _)| k.as_str()).collect();
            keys.sort_unstable();
            for k in keys {
                input.push_str(&self.choice_prefix);
                input.push_str(k);
            }
        }
        input.push_str(&self.output_prefix);
        let target = match (&ex.target, &ex.target_scores) {
            (Some(RawTarget::One(t)), _) => t.clone(),
            (Some(RawTarget::Many(ts)), _) => ts.first().cloned().ok_or("empty `target` list")?,
            (None, Some(scores)) => best_scored(scores)?,
            (None, None) => return Err("neither `target` nor `target_scores`".into()),
        };
        let choices = ex.target_scores.as_ref().map(|s| s.0.iter().map(|(k, _)| k.clone()).collect());
        Ok(Example { task: task.to_owned(), input, target, choices })
    }
}

/// BIG-bench's rule: the first key with the highest score, which must beat the lowest.
fn best_scored(scores: &OrderedScores) -> Result<String, String> {
    let max = scores.0.iter().map(|(_, s)| *s).fold(f64::NEG_INFINITY, f64::max);
    let min = scores.0.iter().map(|(_, s)| *s).fold(f64::INFINITY, f64::min);
    let unusable = match scores.0.len() {
        0 => true,
        1 => max == 0.0,
        _ => max <= min,
    };
    if unusable {
        return Err("`target_scores` has no choice scored above the others".into());
    }
    scores.0.iter().find(|(_, s)| *s == max).map(|(k, _)| k.clone()).ok_or_else(|| "no best choice".into())
}

/// The order key of example `index` of `task`: the first 8 bytes of SHA-256(`"{seed}:{task}:{index}"`).
fn order_key(seed: u64, task: &str, index: usize) -> u64 {
    let digest = Sha256::digest(format!("{seed}:{task}:{index}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// The three splits of one task and its counts.
struct TaskSplits {
    meta: TaskMeta,
    train: Vec<Example>,
    test: Vec<Example>,
}

/// Parses one `task.json` and draws its splits (module docs).
fn split_task(spec: &TaskSpec, bytes: &[u8], cfg: &SuiteConfig) -> Result<TaskSplits, TaskError> {
    let malformed =
        |message: String| TaskError::MalformedTask { task: spec.name.clone(), file: spec.member(), message };
    let raw: RawTask = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let format = PromptFormat::of(&raw);
    let mut seen = HashSet::new();
    let mut unique = Vec::new();
    for (i, ex) in raw.examples.iter().enumerate() {
        let ex = format.compose(&spec.name, ex).map_err(|m| malformed(format!("example {i}: {m}")))?;
        if seen.insert(ex.input.clone()) {
            unique.push(ex);
        }
    }
    if unique.len() < 2 {
        return Err(TaskError::TooFewExamples { task: spec.name.clone(), found: unique.len() });
    }
    let mut order: Vec<(u64, usize)> = (0..unique.len()).map(|i| (order_key(cfg.seed, &spec.name, i), i)).collect();
    order.sort_unstable();
    let used = unique.len().min(cfg.max_examples);
    let n_test = ((used as f64 * cfg.test_fraction).round() as usize).clamp(1, used - 1);
    let mut slots: Vec<Option<Example>> = unique.into_iter().map(Some).collect();
    let mut picked = order[..used].iter().filter_map(|&(_, i)| slots[i].take());
    let test: Vec<Example> = picked.by_ref().take(n_test).collect();
    let train: Vec<Example> = picked.collect();
    let meta = TaskMeta {
        name: spec.name.clone(),
        path: spec.path.clone(),
        domain: spec.domain,
        held_out: spec.held_out,
        examples: raw.examples.len(),
        unique: slots.len(),
        used,
        train: train.len(),
        test: test.len(),
        samples: train.len().min(cfg.samples_per_task),
    };
    Ok(TaskSplits { meta, train, test })
}

// ---------------------------------------------------------------------------------------------------------
// Streaming the archive

/// Counts and hashes the bytes read from the archive, and reports progress.
struct TrackingReader<'a, R> {
    inner: R,
    read: u64,
    hasher: Sha256,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for TrackingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

/// What the archive scan found: task name → `task.json` bytes, and the archive's sha256.
struct Scan {
    found: BTreeMap<String, Vec<u8>>,
    sha256: String,
}

/// Reads the wanted `task.json` members out of the gzipped tar in one pass, stopping the decompression
/// once all are found (the rest of the file is still hashed).
fn scan_archive(archive: &Path, tasks: &[TaskSpec], progress: &mut dyn FnMut(u64)) -> Result<Scan, TaskError> {
    let io_err = |e| TaskError::io(archive, e);
    let (file, _) = ramole_core::fs::open_regular(archive).map_err(io_err)?;
    let mut tracking = TrackingReader { inner: file, read: 0, hasher: Sha256::new(), progress };
    let mut found = BTreeMap::new();
    {
        let gz = flate2::read::GzDecoder::new(BufReader::with_capacity(1 << 20, &mut tracking));
        let mut tar = tar::Archive::new(gz);
        for entry in tar.entries().map_err(io_err)? {
            let mut entry = entry.map_err(io_err)?;
            let path = entry.path().map_err(io_err)?.to_string_lossy().into_owned();
            // Members are `<top folder>/bigbench/benchmark_tasks/...`; match without the top folder.
            let Some((_, rel)) = path.split_once('/') else { continue };
            let Some(spec) = tasks.iter().find(|t| t.member() == rel) else { continue };
            let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
            entry.read_to_end(&mut bytes).map_err(io_err)?;
            found.insert(spec.name.clone(), bytes);
            if found.len() == tasks.len() {
                break;
            }
        }
    }
    io::copy(&mut tracking, &mut io::sink()).map_err(io_err)?;
    let sha256 = tracking.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Scan { found, sha256 })
}

fn write_jsonl(path: &Path, examples: &[Example]) -> Result<(), TaskError> {
    ramole_core::fs::write_atomic_with(path, |w| {
        for ex in examples {
            serde_json::to_writer(&mut *w, ex)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .map_err(|e| TaskError::io(path, e))
}

/// Builds the suite from the BIG-bench sdist `archive` into `out` (created if needed) and returns its
/// metadata. `progress` is called with the number of archive bytes read so far.
///
/// Every task is parsed before anything is written, so a missing or malformed task leaves `out` untouched;
/// `suite.json` is written last.
pub fn build_suite(
    archive: &Path,
    out: &Path,
    cfg: &SuiteConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<SuiteMeta, TaskError> {
    cfg.validate()?;
    let scan = scan_archive(archive, &cfg.tasks, progress)?;
    let mut splits = Vec::with_capacity(cfg.tasks.len());
    for spec in &cfg.tasks {
        let bytes = scan.found.get(&spec.name).ok_or_else(|| TaskError::MissingTask {
            task: spec.name.clone(),
            member: spec.member(),
            archive: archive.to_path_buf(),
        })?;
        splits.push(split_task(spec, bytes, cfg)?);
    }
    fs::create_dir_all(out).map_err(|e| TaskError::io(out, e))?;
    let mut domains: BTreeMap<Domain, Vec<String>> = BTreeMap::new();
    for s in &splits {
        let dir = out.join(&s.meta.name);
        fs::create_dir_all(&dir).map_err(|e| TaskError::io(&dir, e))?;
        write_jsonl(&dir.join(Split::Train.file_name()), &s.train)?;
        write_jsonl(&dir.join(Split::Test.file_name()), &s.test)?;
        write_jsonl(&dir.join(Split::Samples.file_name()), &s.train[..s.meta.samples])?;
        domains.entry(s.meta.domain).or_default().push(s.meta.name.clone());
    }
    let meta = SuiteMeta {
        format: SUITE_FORMAT,
        source: SourceMeta {
            file: archive.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            sha256: scan.sha256,
        },
        seed: cfg.seed,
        max_examples: cfg.max_examples,
        test_fraction: cfg.test_fraction,
        samples_per_task: cfg.samples_per_task,
        domains,
        tasks: splits.into_iter().map(|s| s.meta).collect(),
    };
    let path = out.join(SUITE_FILE);
    let text = serde_json::to_string_pretty(&meta)
        .map_err(|e| TaskError::Parse { path: path.clone(), message: e.to_string() })?;
    ramole_core::fs::write_atomic(&path, (text + "\n").as_bytes()).map_err(|e| TaskError::io(&path, e))?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> RawTask {
        serde_json::from_str(json).expect("test json")
    }

    #[test]
    fn compose_uses_defaults_and_choices() {
        let t = raw(r#"{"examples":[{"input":"x","target_scores":{"b":0,"a":1,"c":1}}]}"#);
        let ex = PromptFormat::of(&t).compose("t", &t.examples[0]).expect("compose");
        assert_eq!(ex.input, "\nQ: x\n  choice: a\n  choice: b\n  choice: c\nA: ");
        assert_eq!(ex.target, "a", "first best-scored key in file order");
        assert_eq!(ex.choices.as_deref(), Some(&["b".to_owned(), "a".to_owned(), "c".to_owned()][..]));
    }

    #[test]
    fn target_scores_without_winner_is_rejected() {
        let t = raw(r#"{"examples":[{"input":"x","target_scores":{"a":0,"b":0}}]}"#);
        assert!(PromptFormat::of(&t).compose("t", &t.examples[0]).is_err());
    }

    #[test]
    fn order_key_is_stable() {
        // Pinned (Python: int.from_bytes(hashlib.sha256(b"42:t:0").digest()[:8], "big")): changing the hash
        // input would silently change every published split.
        assert_eq!(order_key(42, "t", 0), 18192963983261350871);
        assert_ne!(order_key(42, "t", 0), order_key(43, "t", 0));
        assert_ne!(order_key(42, "t", 0), order_key(42, "u", 0));
    }
}
