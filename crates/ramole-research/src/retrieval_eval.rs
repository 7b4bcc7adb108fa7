//! Retrieval evaluation on the task suite, IID and OOD, as in the LoraRetriever paper.
//!
//! Each task of the suite stands for one LoRA, represented as in [`ramole_retriever::LoraPool`]: the mean of the
//! embeddings of `instruction + sample` over its `samples.jsonl` (normalised by the [`Index`]). Each test
//! input is embedded as `instruction + input` (the first [`EvalConfig::per_task`] lines of the task's
//! `test.jsonl`, a seeded random subset: see [`crate::tasks`]) and searched against:
//! - **IID**: the pool of all tasks. A hit is the task's own LoRA at rank 1 (top-1) or within ranks 1–3 (top-3).
//! - **OOD**: the pool without the task's own LoRA. A hit is a LoRA of the same domain at rank 1 (top-1) or
//!   within ranks 1–3 (top-3): the best the retriever can do for a LoRA it has never seen.
//!
//! Averages are over queries (micro), for all tasks, for the tasks held out of retriever training and for
//! the others.

use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use ramole_retriever::{DEFAULT_INSTRUCTION, Index, RetrieverError, SentenceEncoder};

use crate::ResearchError;
use crate::tasks::{Domain, Split, Suite};

/// Default number of test inputs evaluated per task (keeps a full run to a few minutes on a 2-core CPU).
pub const DEFAULT_PER_TASK: usize = 50;
/// Default embedding batch size.
pub const DEFAULT_BATCH_SIZE: usize = 32;
/// The rank cut of the top-k metrics besides top-1.
pub const TOP_K: usize = 3;

/// How the evaluation is run.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Prepended to every sample and test input before embedding.
    pub instruction: String,
    /// Test inputs per task (the first ones of `test.jsonl`).
    pub per_task: usize,
    /// Texts embedded at a time.
    pub batch_size: usize,
}

impl EvalConfig {
    /// Checks the settings: at least one test input per task and one text per batch
    /// ([`ResearchError::InvalidArgument`] otherwise).
    pub fn validate(&self) -> Result<(), ResearchError> {
        if self.per_task == 0 {
            return Err(ResearchError::InvalidArgument {
                name: "per task",
                message: "must be at least 1 test input per task".into(),
            });
        }
        if self.batch_size == 0 {
            return Err(ResearchError::InvalidArgument { name: "batch size", message: "must be at least 1".into() });
        }
        Ok(())
    }
}

impl Default for EvalConfig {
    /// [`DEFAULT_INSTRUCTION`], [`DEFAULT_PER_TASK`] inputs per task, batches of [`DEFAULT_BATCH_SIZE`].
    fn default() -> Self {
        Self { instruction: DEFAULT_INSTRUCTION.to_owned(), per_task: DEFAULT_PER_TASK, batch_size: DEFAULT_BATCH_SIZE }
    }
}

/// A task as the evaluation sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalTask {
    /// The task's (and its LoRA's) name.
    pub name: String,
    /// Its domain.
    pub domain: Domain,
    /// Whether retriever training leaves it out.
    pub held_out: bool,
}

/// The embeddings an evaluation scores: one LoRA vector and some query vectors per task.
#[derive(Debug, Clone)]
pub struct SuiteEmbeddings {
    /// The tasks.
    pub tasks: Vec<EvalTask>,
    /// Per task, its LoRA's embedding (the mean of its samples' embeddings).
    pub loras: Vec<Vec<f32>>,
    /// Per task, the embeddings of its test inputs.
    pub queries: Vec<Vec<Vec<f32>>>,
}

/// Hit rates of a set of queries (fractions in `[0, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Scores {
    /// Number of queries.
    pub queries: usize,
    /// IID: own LoRA ranked first.
    pub iid_top1: f64,
    /// IID: own LoRA within the first [`TOP_K`].
    pub iid_top3: f64,
    /// OOD (own LoRA removed): a LoRA of the same domain ranked first.
    pub ood_domain_top1: f64,
    /// OOD: a LoRA of the same domain within the first [`TOP_K`].
    pub ood_domain_top3: f64,
}

/// Hit counts, summed then turned into [`Scores`].
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    queries: usize,
    hits: [usize; 4],
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.queries += other.queries;
        for (h, o) in self.hits.iter_mut().zip(other.hits) {
            *h += o;
        }
    }

    fn scores(&self) -> Scores {
        let rate = |h: usize| if self.queries == 0 { 0.0 } else { h as f64 / self.queries as f64 };
        Scores {
            queries: self.queries,
            iid_top1: rate(self.hits[0]),
            iid_top3: rate(self.hits[1]),
            ood_domain_top1: rate(self.hits[2]),
            ood_domain_top3: rate(self.hits[3]),
        }
    }
}

/// The result of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    /// The task.
    #[serde(flatten)]
    pub task: EvalTask,
    /// Its scores.
    #[serde(flatten)]
    pub scores: Scores,
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Per task, in suite order.
    pub tasks: Vec<TaskScores>,
    /// Over all queries.
    pub overall: Scores,
    /// Over the queries of tasks held out of retriever training.
    pub held_out: Scores,
    /// Over the queries of the other tasks.
    pub trained_on: Scores,
    /// Number of LoRAs in the IID pool.
    pub pool_size: usize,
    /// Test inputs per task asked for.
    pub per_task: usize,
    /// The instruction prepended before embedding.
    pub instruction: String,
    /// Seconds spent embedding samples and queries (0 when the embeddings were given).
    pub embed_seconds: f64,
}

impl EvalReport {
    /// The report as a markdown table (one row per task, then the averages), percentages.
    pub fn to_markdown(&self) -> String {
        let pct = |x: f64| format!("{:.1}", 100.0 * x);
        let row = |name: &str, domain: &str, held: &str, s: &Scores| {
            format!(
                "| {name} | {domain} | {held} | {} | {} | {} | {} | {} |\n",
                s.queries,
                pct(s.iid_top1),
                pct(s.iid_top3),
                pct(s.ood_domain_top1),
                pct(s.ood_domain_top3)
            )
        };
        let mut out = String::from(
            "| task | domain | held out | queries | IID top-1 % | IID top-3 % | OOD same-domain top-1 % | OOD same-domain top-3 % |\n\
             |---|---|---|---:|---:|---:|---:|---:|\n",
        );
        for t in &self.tasks {
            out += &row(&t.task.name, t.task.domain.as_str(), if t.task.held_out { "yes" } else { "" }, &t.scores);
        }
        out += &row("**all**", "", "", &self.overall);
        out += &row("**held out**", "", "yes", &self.held_out);
        out += &row("**trained on**", "", "", &self.trained_on);
        out
    }

    /// A before/after markdown table: the averages (held out, trained on, all) of `before` (for example
    /// the base encoder's report) and of `self`, with the differences in percentage points.
    pub fn comparison_markdown(&self, before: &EvalReport) -> String {
        let mut out = String::from(
            "| tasks | queries | IID top-1 % | IID top-3 % | OOD same-domain top-1 % | OOD same-domain top-3 % |\n\
             |---|---:|---:|---:|---:|---:|\n",
        );
        let metrics = |s: &Scores| [s.iid_top1, s.iid_top3, s.ood_domain_top1, s.ood_domain_top3];
        let groups = [
            ("held out", &before.held_out, &self.held_out),
            ("trained on", &before.trained_on, &self.trained_on),
            ("all", &before.overall, &self.overall),
        ];
        for (name, b, a) in groups {
            let cells: Vec<String> = metrics(b)
                .iter()
                .zip(metrics(a))
                // rounded to the printed digit first, and `+ 0.0` turns -0.0 into 0.0: no change prints "+0.0"
                .map(|(b, a)| {
                    let delta = (1000.0 * (a - b)).round() / 10.0 + 0.0;
                    format!("{:.1} → {:.1} ({delta:+.1})", 100.0 * b, 100.0 * a)
                })
                .collect();
            out += &format!("| {name} | {} | {} |\n", a.queries, cells.join(" | "));
        }
        out
    }
}

/// Scores precomputed embeddings (see the module docs).
pub fn score(emb: &SuiteEmbeddings) -> Result<EvalReport, ResearchError> {
    let n = emb.tasks.len();
    if emb.loras.len() != n || emb.queries.len() != n {
        return Err(ResearchError::Input(format!(
            "{n} tasks but {} LoRA embeddings and {} query lists",
            emb.loras.len(),
            emb.queries.len()
        )));
    }
    if emb.queries.iter().all(Vec::is_empty) {
        return Err(ResearchError::Input(format!("no test input to evaluate ({n} tasks, no query)")));
    }
    let dim = emb.loras.first().map_or(0, Vec::len);
    let mut index = Index::new(dim);
    for (task, lora) in emb.tasks.iter().zip(&emb.loras) {
        index.add(&task.name, lora.clone())?;
    }
    let domain_of = |name: &str| emb.tasks.iter().find(|t| t.name == name).map(|t| t.domain);
    let (mut overall, mut held_out, mut trained_on) = (Counts::default(), Counts::default(), Counts::default());
    let mut tasks = Vec::with_capacity(n);
    for (task, queries) in emb.tasks.iter().zip(&emb.queries) {
        let iid = index.search(queries, TOP_K)?;
        let mut without = index.clone();
        without.remove(&task.name)?;
        let ood = without.search(queries, TOP_K)?;
        let same_domain = |h: &(String, f32)| domain_of(&h.0) == Some(task.domain);
        let mut c = Counts { queries: queries.len(), hits: [0; 4] };
        for (iid_hits, ood_hits) in iid.iter().zip(&ood) {
            let checks = [
                iid_hits.first().is_some_and(|h| h.0 == task.name),
                iid_hits.iter().any(|h| h.0 == task.name),
                ood_hits.first().is_some_and(same_domain),
                ood_hits.iter().any(same_domain),
            ];
            for (hit, check) in c.hits.iter_mut().zip(checks) {
                *hit += usize::from(check);
            }
        }
        overall.add(&c);
        if task.held_out { &mut held_out } else { &mut trained_on }.add(&c);
        tasks.push(TaskScores { task: task.clone(), scores: c.scores() });
    }
    Ok(EvalReport {
        tasks,
        overall: overall.scores(),
        held_out: held_out.scores(),
        trained_on: trained_on.scores(),
        pool_size: n,
        per_task: 0,
        instruction: String::new(),
        embed_seconds: 0.0,
    })
}

/// Embeds the suite's samples and test inputs with `encoder` (all texts in one batched pass).
pub fn embed_suite<B: Backend>(
    suite: &Suite,
    encoder: &SentenceEncoder<B>,
    cfg: &EvalConfig,
) -> Result<SuiteEmbeddings, ResearchError> {
    cfg.validate()?;
    let mut tasks = Vec::new();
    let mut texts = Vec::new();
    // Per task: (first text, number of samples, number of queries).
    let mut spans = Vec::new();
    for meta in &suite.meta().tasks {
        let samples = suite.examples(&meta.name, Split::Samples)?;
        if samples.is_empty() {
            let path = suite.dir().join(&meta.name).join(Split::Samples.file_name());
            return Err(RetrieverError::EmptySamples { path }.into());
        }
        let mut test = suite.examples(&meta.name, Split::Test)?;
        test.truncate(cfg.per_task);
        spans.push((texts.len(), samples.len(), test.len()));
        texts.extend(samples.iter().chain(&test).map(|e| format!("{}{}", cfg.instruction, e.input)));
        tasks.push(EvalTask { name: meta.name.clone(), domain: meta.domain, held_out: meta.held_out });
    }
    let vectors = encoder.embed(&texts, cfg.batch_size)?;
    let mut loras = Vec::with_capacity(tasks.len());
    let mut queries = Vec::with_capacity(tasks.len());
    for (start, n_samples, n_test) in spans {
        let samples = &vectors[start..start + n_samples];
        let mut mean = vec![0f32; encoder.dim()];
        for v in samples {
            for (m, x) in mean.iter_mut().zip(v) {
                *m += x / n_samples as f32;
            }
        }
        loras.push(mean);
        queries.push(vectors[start + n_samples..start + n_samples + n_test].to_vec());
    }
    Ok(SuiteEmbeddings { tasks, loras, queries })
}

/// Embeds and scores the suite: the whole evaluation.
pub fn evaluate<B: Backend>(
    suite: &Suite,
    encoder: &SentenceEncoder<B>,
    cfg: &EvalConfig,
) -> Result<EvalReport, ResearchError> {
    let start = Instant::now();
    let emb = embed_suite(suite, encoder, cfg)?;
    let embed_seconds = start.elapsed().as_secs_f64();
    Ok(EvalReport { per_task: cfg.per_task, instruction: cfg.instruction.clone(), embed_seconds, ..score(&emb)? })
}
