//! Training RAMoLE's RouterLoRA gate on the suite (`ramole train-gate`): the examples are the train
//! inputs of the suite's training tasks (never a held-out task) whose own LoRA the pool serves (named
//! after the task, as `ramole zoo build` names them), each with the LoRAs the retriever finds for it in
//! the pool (top-k, as at serving time);
//! [`ramole_mole::gate::train_gate`] then trains the gate with LoRA dropout, the base model and every
//! LoRA frozen.

use burn::tensor::backend::{AutodiffBackend, Backend};
use ramole_models::CausalLm;
use ramole_mole::gate::{GateExample, GateTrainConfig, GateTrainReport, RouterGate, train_gate};
use ramole_mole::train::{StepReport, TrainRecord, tokenize_records};
use ramole_pipeline::Ramole;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::ResearchError;
use crate::tasks::{Split, Suite};

/// Which examples the gate is trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDataConfig {
    /// Train examples drawn per training task.
    pub per_task: usize,
    /// LoRAs retrieved per example (the set the gate weighs).
    pub top_k: usize,
    /// Tokens per example at most (input truncated from the left).
    pub max_len: usize,
    /// Seed of the draw.
    pub seed: u64,
}

impl Default for GateDataConfig {
    /// 32 examples per task, top 3, 160 tokens (the zoo's), seed 0.
    fn default() -> Self {
        Self { per_task: 32, top_k: 3, max_len: 160, seed: 0 }
    }
}

/// What [`train_gate_on_suite`] trained on and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteGateReport {
    /// The data configuration.
    pub data: GateDataConfig,
    /// The tasks the examples came from.
    pub tasks: Vec<String>,
    /// Inputs truncated to fit `max_len`.
    pub truncated: usize,
    /// The training run.
    pub training: GateTrainReport,
}

/// The gate's training examples (module docs), retrieved with `ramole`'s encoder and pool.
pub fn gate_examples<B: Backend>(
    suite: &Suite,
    ramole: &Ramole<B>,
    data: &GateDataConfig,
) -> Result<(Vec<GateExample>, Vec<String>, usize), ResearchError> {
    let engine = ramole.engine();
    let tokenizer = engine
        .tokenizer()
        .ok_or_else(|| ResearchError::Input("the base model has no tokenizer: the gate trains on text".into()))?;
    let eos = *engine
        .config()
        .eos_token_ids
        .first()
        .ok_or_else(|| ResearchError::Input("the base model declares no end-of-sequence token".into()))?;
    let mut rng = StdRng::seed_from_u64(data.seed);
    let (mut examples, mut tasks, mut truncated) = (Vec::new(), Vec::new(), 0);
    let servable = ramole.servable();
    // Training tasks whose own LoRA (named after the task, as the zoo names them) is served: the
    // gate learns to weigh a retrieved set that holds the right LoRA among others, as at serving time.
    for meta in suite.meta().tasks.iter().filter(|t| !t.held_out && servable.contains(&t.name.as_str())) {
        let all = suite.examples(&meta.name, Split::Train)?;
        let picked: Vec<TrainRecord> = all
            .choose_multiple(&mut rng, data.per_task)
            .map(|e| TrainRecord { input: e.input.clone(), target: e.target.clone() })
            .collect();
        if picked.is_empty() {
            continue;
        }
        let inputs: Vec<String> = picked.iter().map(|r| r.input.clone()).collect();
        let hits = ramole.retrieve(&inputs, data.top_k, &[])?;
        let (tokenized, cut) = tokenize_records(tokenizer, &picked, eos, data.max_len)?;
        truncated += cut;
        for (example, hits) in tokenized.into_iter().zip(hits) {
            if hits.is_empty() {
                continue;
            }
            examples.push(GateExample { example, adapters: hits.into_iter().map(|(name, _)| name).collect() });
        }
        tasks.push(meta.name.clone());
    }
    if examples.is_empty() {
        return Err(ResearchError::Input(format!(
            "{}: no training task of the suite has its LoRA (named after the task) in the pool",
            suite.dir().display()
        )));
    }
    Ok((examples, tasks, truncated))
}

/// Trains a gate for `ramole`'s pool on `suite` (module docs), with the base model loaded again from
/// `model` on the autodiff backend `A` (the serving engine's copy stays as it is).
pub fn train_gate_on_suite<B: Backend, A: AutodiffBackend>(
    suite: &Suite,
    ramole: &Ramole<B>,
    model: &std::path::Path,
    data: &GateDataConfig,
    cfg: &GateTrainConfig,
    device: &A::Device,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<(RouterGate<A::InnerBackend>, SuiteGateReport), ResearchError> {
    if data.per_task == 0 || data.top_k == 0 || data.max_len < 2 {
        return Err(ResearchError::InvalidArgument {
            name: "gate data",
            message: "per task and top-k must be at least 1, max len at least 2".into(),
        });
    }
    cfg.validate()?;
    let (examples, tasks, truncated) = gate_examples(suite, ramole, data)?;
    let lm = CausalLm::<A>::load(model, device)?;
    let (gate, training) =
        train_gate(lm.model, &lm.config, ramole.engine().adapters(), &examples, cfg, device, on_step)?;
    Ok((gate, SuiteGateReport { data: data.clone(), tasks, truncated, training }))
}
