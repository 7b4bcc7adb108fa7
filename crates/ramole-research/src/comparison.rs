//! The paper's comparison: the suite's test inputs, shuffled into mixed batches, answered by the base
//! model, perfect selection (each input's own task LoRA), selection (the top-1 retrieved), mixture
//! and fusion (the top-k retrieved), in the IID setting (every LoRA in the pool) and the OOD setting
//! (each input's own LoRA removed from the pool, as LoraRetriever does).
//!
//! # Inputs
//! Per task, [`ComparisonConfig::per_task`] test examples drawn by a seeded shuffle; all of them
//! shuffled together (seeded) so that every batch mixes tasks. The generation budget of a task is
//! the token length of its longest target (over its train and test splits) plus one for EOS, capped
//! at [`MAX_BUDGET`].
//!
//! # Metrics
//! Exact match as LoraRetriever's evaluation computes it
//! ([`crate::metrics::exact_match_loraretriever`]: lower-case, surrounding whitespace and every
//! period removed) for every task; sentence BLEU-4 and ROUGE-1/2/L F1 for the tasks of the generation domain. Per task the
//! mean over its inputs; per domain and overall the mean over inputs (so larger tasks do not count
//! more: every task contributes `per_task` inputs, fewer only when its test split is smaller).

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use ramole_pipeline::{Job, Ramole, RouteConfig, Routing, Strategy, Weighting};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::ResearchError;
use crate::metrics::{self, MetricSet};
use crate::tasks::{Domain, Split, Suite};

/// The largest generation budget of a task, in tokens.
pub const MAX_BUDGET: usize = 64;

/// Which LoRAs the pool holds for an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Setting {
    /// Every LoRA, the input's own included.
    Iid,
    /// The input's own LoRA removed.
    Ood,
}

impl Setting {
    /// `iid` or `ood`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Iid => "iid",
            Self::Ood => "ood",
        }
    }
}

/// A row of the comparison: how inputs are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The base model alone.
    Base,
    /// The input's own task LoRA (an upper bound for selection).
    Perfect,
    /// A retrieval strategy ([`Strategy::Selection`], [`Strategy::Mixture`], [`Strategy::Fusion`],
    /// [`Strategy::Arrow`]).
    Routed(Strategy),
}

impl Method {
    /// The name in reports (`base`, `perfect`, `selection`, `mixture`, `fusion`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Perfect => "perfect",
            Self::Routed(s) => s.name(),
        }
    }
}

/// What the comparison runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonConfig {
    /// Test inputs per task (fewer when a task has fewer).
    pub per_task: usize,
    /// Seed of the draws and of the mixing.
    pub seed: u64,
    /// Retrieved LoRAs per input for mixture and fusion.
    pub top_k: usize,
    /// Weights of mixture and fusion.
    pub weighting: Weighting,
    /// Arrow's per-token selection among the retrieved LoRAs.
    pub arrow: ramole_core::lora::ArrowParams,
    /// Inputs per heterogeneous batch.
    pub batch_size: usize,
    /// The tasks (default: every task of the suite).
    pub tasks: Option<Vec<String>>,
    /// The methods, each run in the settings where it means something (base and perfect: IID only).
    pub methods: Vec<Method>,
}

impl Default for ComparisonConfig {
    fn default() -> Self {
        Self {
            per_task: 20,
            seed: 42,
            top_k: 3,
            weighting: Weighting::Uniform,
            arrow: RouteConfig::default().arrow,
            batch_size: 16,
            tasks: None,
            methods: vec![
                Method::Base,
                Method::Perfect,
                Method::Routed(Strategy::Selection),
                Method::Routed(Strategy::Mixture),
                Method::Routed(Strategy::Fusion),
                Method::Routed(Strategy::Arrow),
            ],
        }
    }
}

/// One figure of the comparison (the `--json` record format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The method (`base`, `perfect`, `selection`, `mixture`, `fusion`, `arrow`).
    pub strategy: String,
    /// `iid` or `ood`.
    pub setting: String,
    /// The task, or `*` for a domain or overall figure.
    pub task: String,
    /// The domain, or `*` for the overall figure.
    pub domain: String,
    /// `em`, `bleu`, `rouge1`, `rouge2` or `rougeL`.
    pub metric: String,
    /// In `[0, 1]`.
    pub value: f64,
    /// Inputs averaged.
    pub n: usize,
}

/// One test input with its task.
#[derive(Debug, Clone)]
struct Item {
    task: String,
    domain: Domain,
    input: String,
    targets: Vec<String>,
    budget: usize,
}

/// Progress: a (method, setting) run starting, with its number of inputs.
#[derive(Debug, Clone, Copy)]
pub struct RunStart {
    /// The method.
    pub method: Method,
    /// The setting.
    pub setting: Setting,
    /// Position of this run (1-based) and number of runs.
    pub index: usize,
    /// Runs in the comparison.
    pub total: usize,
    /// Inputs in the run.
    pub inputs: usize,
}

/// Runs the comparison; `on_run` is called as each (method, setting) starts, `on_batch` after each
/// batch with the number of inputs answered so far in the current run.
pub fn compare<B: Backend>(
    ramole: &Ramole<B>,
    suite: &Suite,
    cfg: &ComparisonConfig,
    on_run: &mut dyn FnMut(RunStart),
) -> Result<Vec<Record>, ResearchError> {
    if cfg.per_task == 0 || cfg.batch_size == 0 || cfg.top_k == 0 {
        return Err(ResearchError::Config("per-task, batch size and top-k must be at least 1".into()));
    }
    let tokenizer =
        ramole.engine().tokenizer().ok_or_else(|| ResearchError::Config("the base model has no tokenizer".into()))?;
    let tasks: Vec<&str> = match &cfg.tasks {
        Some(t) => t.iter().map(String::as_str).collect(),
        None => suite.meta().tasks.iter().map(|t| t.name.as_str()).collect(),
    };
    let servable = ramole.servable();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut items = Vec::new();
    for &task in &tasks {
        let meta = suite.task(task)?;
        if !servable.contains(&task) {
            return Err(ResearchError::Config(format!(
                "task `{task}` has no servable LoRA of its name in the pool in {} (build the zoo first)",
                ramole.pool().dir().display()
            )));
        }
        let mut test = suite.examples(task, Split::Test)?;
        let longest = test
            .iter()
            .chain(&suite.examples(task, Split::Train)?)
            .map(|e| tokenizer.encode(e.target.as_str(), false).map(|enc| enc.len()).unwrap_or(MAX_BUDGET))
            .max()
            .unwrap_or(0);
        let budget = (longest + 1).min(MAX_BUDGET);
        test.shuffle(&mut rng);
        for e in test.into_iter().take(cfg.per_task) {
            items.push(Item {
                task: task.to_string(),
                domain: meta.domain,
                input: e.input,
                targets: vec![e.target],
                budget,
            });
        }
    }
    items.shuffle(&mut rng);
    let jobs: Vec<Job> = items.iter().map(|i| Job { input: i.input.clone(), max_new_tokens: i.budget }).collect();
    let inputs: Vec<String> = items.iter().map(|i| i.input.clone()).collect();

    let mut runs: Vec<(Method, Setting)> = Vec::new();
    for &m in &cfg.methods {
        runs.push((m, Setting::Iid));
        if matches!(m, Method::Routed(_)) {
            runs.push((m, Setting::Ood));
        }
    }
    // Retrieval once per setting (top-k; selection takes the first).
    let mut hits: BTreeMap<Setting, Vec<Vec<(String, f32)>>> = BTreeMap::new();
    for setting in [Setting::Iid, Setting::Ood] {
        if runs.iter().any(|(m, s)| *s == setting && matches!(m, Method::Routed(_))) {
            let exclude: Vec<Option<&str>> = match setting {
                Setting::Iid => Vec::new(),
                Setting::Ood => items.iter().map(|i| Some(i.task.as_str())).collect(),
            };
            hits.insert(setting, ramole.retrieve(&inputs, cfg.top_k, &exclude)?);
        }
    }
    let mut records = Vec::new();
    for (index, &(method, setting)) in runs.iter().enumerate() {
        on_run(RunStart { method, setting, index: index + 1, total: runs.len(), inputs: items.len() });
        let routings: Vec<Routing> = match method {
            Method::Base => {
                let cfg = RouteConfig { strategy: Strategy::Base, top_k: 1, ..RouteConfig::default() };
                items.iter().map(|_| Routing::from_hits(&[], &cfg)).collect()
            }
            Method::Perfect => items.iter().map(|i| Routing::single(i.task.clone())).collect(),
            Method::Routed(strategy) => {
                let rc = RouteConfig { strategy, top_k: cfg.top_k, weighting: cfg.weighting, arrow: cfg.arrow };
                hits.get(&setting).map(|h| h.iter().map(|h| Routing::from_hits(h, &rc)).collect()).unwrap_or_default()
            }
        };
        let answers = ramole.generate(&jobs, &routings, cfg.batch_size);
        let mut scored: Vec<(&Item, MetricSet)> = Vec::with_capacity(items.len());
        for (item, answer) in items.iter().zip(answers) {
            let output = answer.map(|a| a.output)?;
            let mut m = metrics::score(&output, &item.targets);
            // Exact match as LoraRetriever's evaluation computes it (module docs).
            m.em = f64::from(u8::from(item.targets.iter().any(|t| metrics::exact_match_loraretriever(&output, t))));
            scored.push((item, m));
        }
        records.extend(aggregate(method, setting, &scored));
    }
    Ok(records)
}

/// Per task, per domain and overall records of one run.
fn aggregate(method: Method, setting: Setting, scored: &[(&Item, MetricSet)]) -> Vec<Record> {
    let mut out = Vec::new();
    let generation = |d: Domain| d == Domain::Generation;
    let metrics_of = |d: Domain| -> &'static [&'static str] {
        if generation(d) { &["bleu", "rouge1", "rouge2", "rougeL"] } else { &["em"] }
    };
    let value = |m: &MetricSet, metric: &str| match metric {
        "em" => m.em,
        "bleu" => m.bleu,
        "rouge1" => m.rouge1,
        "rouge2" => m.rouge2,
        _ => m.rouge_l,
    };
    let mut push = |task: &str, domain: &str, metric: &str, sets: &[&MetricSet]| {
        if let Some(mean) = MetricSet::mean(sets.iter().copied()) {
            out.push(Record {
                strategy: method.name().into(),
                setting: setting.name().into(),
                task: task.into(),
                domain: domain.into(),
                metric: metric.into(),
                value: value(&mean, metric),
                n: sets.len(),
            });
        }
    };
    let mut by_task: BTreeMap<(&str, Domain), Vec<&MetricSet>> = BTreeMap::new();
    for (item, m) in scored {
        by_task.entry((item.task.as_str(), item.domain)).or_default().push(m);
    }
    for ((task, domain), sets) in &by_task {
        for metric in metrics_of(*domain) {
            push(task, domain.as_str(), metric, sets);
        }
    }
    let mut by_domain: BTreeMap<Domain, Vec<&MetricSet>> = BTreeMap::new();
    for (item, m) in scored {
        by_domain.entry(item.domain).or_default().push(m);
    }
    for (domain, sets) in &by_domain {
        for metric in metrics_of(*domain) {
            push("*", domain.as_str(), metric, sets);
        }
    }
    // Overall: exact match over the non-generation inputs, the generation metrics over the rest.
    let em: Vec<&MetricSet> = scored.iter().filter(|(i, _)| !generation(i.domain)).map(|(_, m)| m).collect();
    push("*", "*", "em", &em);
    let generated: Vec<&MetricSet> = scored.iter().filter(|(i, _)| generation(i.domain)).map(|(_, m)| m).collect();
    for metric in ["bleu", "rouge1", "rouge2", "rougeL"] {
        push("*", "*", metric, &generated);
    }
    out
}

/// A markdown table of the overall figures and of each task's main metric (EM, or ROUGE-L for
/// generation tasks): one row per task, one column per (method, setting).
pub fn to_markdown(records: &[Record]) -> String {
    let mut columns: Vec<(String, String)> = Vec::new();
    for r in records {
        let c = (r.strategy.clone(), r.setting.clone());
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    let main = |r: &Record| {
        (r.domain == Domain::Generation.as_str() && r.metric == "rougeL")
            || (r.domain != Domain::Generation.as_str() && r.metric == "em")
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    for r in records.iter().filter(|r| r.task != "*" && main(r)) {
        let row = (r.task.clone(), r.domain.clone());
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    let cell = |task: &str, domain: &str, metric: Option<&str>, c: &(String, String)| -> String {
        records
            .iter()
            .find(|r| {
                r.task == task
                    && r.domain == domain
                    && r.strategy == c.0
                    && r.setting == c.1
                    && metric.map_or_else(|| main(r), |m| r.metric == m)
            })
            .map_or_else(|| "–".into(), |r| format!("{:.1}", 100.0 * r.value))
    };
    let mut s = String::from("| task | domain | metric |");
    for c in &columns {
        s.push_str(&format!(" {} {} |", c.0, c.1.to_uppercase()));
    }
    s.push_str("\n|---|---|---|");
    s.push_str(&"---:|".repeat(columns.len()));
    s.push('\n');
    for (task, domain) in &rows {
        let metric = if domain == Domain::Generation.as_str() { "ROUGE-L" } else { "EM" };
        s.push_str(&format!("| {task} | {domain} | {metric} |"));
        for c in &columns {
            s.push_str(&format!(" {} |", cell(task, domain, None, c)));
        }
        s.push('\n');
    }
    for (metric, label) in [("em", "EM"), ("bleu", "BLEU"), ("rougeL", "ROUGE-L")] {
        s.push_str(&format!("| **overall** | | {label} |"));
        for c in &columns {
            s.push_str(&format!(" {} |", cell("*", "*", Some(metric), c)));
        }
        s.push('\n');
    }
    s
}
