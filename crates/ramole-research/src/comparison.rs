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
//! Each task is scored by the metric that fits it ([`Metric`], recorded in the suite): exact match as
//! LoraRetriever's evaluation computes it ([`crate::metrics::exact_match_loraretriever`]: lower-case,
//! surrounding whitespace and every period removed) as `em` for short answers; the same rule as `acc`
//! (accuracy) for choice tasks; sentence BLEU-4 and ROUGE-1/2/L F1 (`bleu`, `rouge1`, `rouge2`, `rougeL`)
//! for generated sentences. Per task the mean over its inputs. Per domain and overall, `score` averages
//! each input's main metric (`em`, `acc` or `rougeL`) over inputs (every task contributes `per_task`
//! inputs, fewer only when its test split is smaller); overall, `em`, `acc`, `rougeL` and `bleu` are also
//! given over the inputs of the tasks with that metric.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use ramole_pipeline::{Job, Ramole, RouteConfig, Routing, Strategy, Weighting};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::ResearchError;
use crate::metrics::{self, MetricSet};
use crate::tasks::{Domain, Metric, Split, Suite};

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
    /// `em`, `acc`, `bleu`, `rouge1`, `rouge2` or `rougeL`; `score` for a domain or overall mean of each
    /// input's main metric.
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
    metric: Metric,
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
                metric: meta.metric,
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

/// The record names of a task's metric; the first is its main one.
fn metric_names(m: Metric) -> &'static [&'static str] {
    match m {
        Metric::ExactMatch => &["em"],
        Metric::Choice => &["acc"],
        Metric::Rouge => &["rougeL", "bleu", "rouge1", "rouge2"],
    }
}

/// Whether a per-task record holds its task's main metric.
fn is_main(metric: &str) -> bool {
    matches!(metric, "em" | "acc" | "rougeL")
}

fn value_of(m: &MetricSet, metric: &str) -> f64 {
    match metric {
        "em" | "acc" => m.em,
        "bleu" => m.bleu,
        "rouge1" => m.rouge1,
        "rouge2" => m.rouge2,
        _ => m.rouge_l,
    }
}

/// Per task, per domain and overall records of one run.
fn aggregate(method: Method, setting: Setting, scored: &[(&Item, MetricSet)]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut push = |task: &str, domain: &str, metric: &str, values: &[f64]| {
        if !values.is_empty() {
            out.push(Record {
                strategy: method.name().into(),
                setting: setting.name().into(),
                task: task.into(),
                domain: domain.into(),
                metric: metric.into(),
                value: values.iter().sum::<f64>() / values.len() as f64,
                n: values.len(),
            });
        }
    };
    let main = |item: &Item, m: &MetricSet| value_of(m, metric_names(item.metric)[0]);
    let mut by_task: BTreeMap<(&str, Domain, Metric), Vec<&MetricSet>> = BTreeMap::new();
    for (item, m) in scored {
        by_task.entry((item.task.as_str(), item.domain, item.metric)).or_default().push(m);
    }
    for ((task, domain, metric), sets) in &by_task {
        for name in metric_names(*metric) {
            let values: Vec<f64> = sets.iter().map(|m| value_of(m, name)).collect();
            push(task, domain.as_str(), name, &values);
        }
    }
    let mut by_domain: BTreeMap<Domain, Vec<f64>> = BTreeMap::new();
    for (item, m) in scored {
        by_domain.entry(item.domain).or_default().push(main(item, m));
    }
    for (domain, values) in &by_domain {
        push("*", domain.as_str(), "score", values);
    }
    let all: Vec<f64> = scored.iter().map(|(i, m)| main(i, m)).collect();
    push("*", "*", "score", &all);
    for (metric, name) in
        [(Metric::ExactMatch, "em"), (Metric::Choice, "acc"), (Metric::Rouge, "rougeL"), (Metric::Rouge, "bleu")]
    {
        let values: Vec<f64> =
            scored.iter().filter(|(i, _)| i.metric == metric).map(|(_, m)| value_of(m, name)).collect();
        push("*", "*", name, &values);
    }
    out
}

/// A markdown table of each task's main metric (EM, accuracy or ROUGE-L), each domain's score and the
/// overall figures: one row each, one column per (method, setting).
pub fn to_markdown(records: &[Record]) -> String {
    let mut columns: Vec<(String, String)> = Vec::new();
    for r in records {
        let c = (r.strategy.clone(), r.setting.clone());
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for r in records.iter().filter(|r| r.task != "*" && is_main(&r.metric)) {
        let row = (r.task.clone(), r.domain.clone(), r.metric.clone());
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    let cell = |task: &str, domain: &str, metric: &str, c: &(String, String)| -> String {
        records
            .iter()
            .find(|r| {
                r.task == task && r.domain == domain && r.strategy == c.0 && r.setting == c.1 && r.metric == metric
            })
            .map_or_else(|| "–".into(), |r| format!("{:.1}", 100.0 * r.value))
    };
    let label = |metric: &str| match metric {
        "em" => "EM",
        "acc" => "accuracy",
        "rougeL" => "ROUGE-L",
        "bleu" => "BLEU",
        _ => "score",
    };
    let mut s = String::from("| task | domain | metric |");
    for c in &columns {
        s.push_str(&format!(" {} {} |", c.0, c.1.to_uppercase()));
    }
    s.push_str("\n|---|---|---|");
    s.push_str(&"---:|".repeat(columns.len()));
    s.push('\n');
    for (task, domain, metric) in &rows {
        s.push_str(&format!("| {task} | {domain} | {} |", label(metric)));
        for c in &columns {
            s.push_str(&format!(" {} |", cell(task, domain, metric, c)));
        }
        s.push('\n');
    }
    let mut domains: Vec<&str> =
        records.iter().filter(|r| r.task == "*" && r.domain != "*").map(|r| r.domain.as_str()).collect();
    domains.sort_unstable();
    domains.dedup();
    for domain in domains {
        s.push_str(&format!("| *{domain}* | {domain} | score |"));
        for c in &columns {
            s.push_str(&format!(" {} |", cell("*", domain, "score", c)));
        }
        s.push('\n');
    }
    for metric in ["score", "em", "acc", "rougeL", "bleu"] {
        if !records.iter().any(|r| r.task == "*" && r.domain == "*" && r.metric == metric) {
            continue;
        }
        s.push_str(&format!("| **overall** | | {} |", label(metric)));
        for c in &columns {
            s.push_str(&format!(" {} |", cell("*", "*", metric, c)));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(task: &str, domain: Domain, metric: Metric) -> Item {
        Item { task: task.into(), domain, metric, input: String::new(), targets: Vec::new(), budget: 1 }
    }

    fn set(em: f64, rouge_l: f64) -> MetricSet {
        MetricSet { em, bleu: rouge_l / 2.0, rouge1: rouge_l, rouge2: rouge_l, rouge_l }
    }

    /// Each task is reported by its metric; domains and the overall score average each input's main metric;
    /// the overall per-metric figures cover the tasks of that metric only.
    #[test]
    fn each_task_is_scored_by_its_metric() {
        let short = item("short", Domain::Arithmetic, Metric::ExactMatch);
        let choice = item("choice", Domain::Arithmetic, Metric::Choice);
        let sentence = item("sentence", Domain::Syntax, Metric::Rouge);
        let scored = vec![
            (&short, set(1.0, 0.9)),
            (&short, set(0.0, 0.1)),
            (&choice, set(1.0, 1.0)),
            (&sentence, set(0.0, 0.5)),
        ];
        let records = aggregate(Method::Base, Setting::Iid, &scored);
        let get = |task: &str, domain: &str, metric: &str| {
            records.iter().find(|r| r.task == task && r.domain == domain && r.metric == metric).map(|r| (r.value, r.n))
        };
        assert_eq!(get("short", "arithmetic", "em"), Some((0.5, 2)));
        assert_eq!(get("short", "arithmetic", "rougeL"), None, "a short answer is not scored by ROUGE");
        assert_eq!(get("choice", "arithmetic", "acc"), Some((1.0, 1)));
        assert_eq!(get("sentence", "syntax", "rougeL"), Some((0.5, 1)));
        assert_eq!(get("sentence", "syntax", "bleu"), Some((0.25, 1)));
        assert_eq!(get("sentence", "syntax", "em"), None);
        assert_eq!(get("*", "arithmetic", "score"), Some((2.0 / 3.0, 3)));
        assert_eq!(get("*", "syntax", "score"), Some((0.5, 1)));
        assert_eq!(get("*", "*", "score"), Some((2.5 / 4.0, 4)));
        assert_eq!(get("*", "*", "em"), Some((0.5, 2)));
        assert_eq!(get("*", "*", "acc"), Some((1.0, 1)));
        assert_eq!(get("*", "*", "rougeL"), Some((0.5, 1)));
        let table = to_markdown(&records);
        assert!(table.contains("| choice | arithmetic | accuracy | 100.0 |"), "{table}");
        assert!(table.contains("| sentence | syntax | ROUGE-L | 50.0 |"), "{table}");
        assert!(table.contains("| **overall** | | score | 62.5 |"), "{table}");
    }
}
