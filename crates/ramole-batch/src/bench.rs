//! The decode benchmark of a heterogeneous batch, shared by `ramole bench-decode` and the criterion
//! bench: the same rows decoded (a) with no adapters, (b) each with its own adapter, (c) each mixing
//! several adapters, so that the cost of per-row LoRA shows as a ratio measured in one run.

use std::path::Path;

use burn::tensor::backend::Backend;
use ramole_core::lora::{ArrowParams, Composition};
use ramole_models::llama::LinearKind;
use ramole_mole::RowRequest;
use ramole_mole::synthetic::SyntheticAdapter;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{BatchError, Engine, Request, RequestInput, RunOptions, RunStats, Sampling};

/// The shape of the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeBench {
    /// Rows in the batch.
    pub batch: usize,
    /// Distinct adapters in the pool.
    pub adapters: usize,
    /// Adapters each row mixes in scenario (c).
    pub mix: usize,
    /// Prompt tokens per row.
    pub prompt_len: usize,
    /// Tokens generated per row.
    pub new_tokens: usize,
    /// Adapter rank.
    pub rank: usize,
    /// Adapted linear layers.
    pub targets: Vec<LinearKind>,
}

impl Default for DecodeBench {
    /// Batch 16, 16 adapters of rank 8 on q/k/v/o, rows mixing 3, 32 prompt + 32 new tokens.
    fn default() -> Self {
        Self {
            batch: 16,
            adapters: 16,
            mix: 3,
            prompt_len: 32,
            new_tokens: 32,
            rank: 8,
            targets: vec![LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O],
        }
    }
}

/// One scenario: a label and its requests.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// `base`, `distinct` or `mixture`.
    pub label: &'static str,
    /// The batch.
    pub requests: Vec<Request>,
}

impl DecodeBench {
    /// Writes the synthetic adapters (`bench_00`, …) under `dir` and loads them into `engine`.
    pub fn load_adapters<B: Backend>(&self, engine: &mut Engine<B>, dir: &Path) -> Result<(), BatchError> {
        for i in 0..self.adapters {
            let name = adapter_name(i);
            if engine.adapters().get(&name).is_some() {
                continue;
            }
            let spec = SyntheticAdapter {
                r: self.rank,
                alpha: 2.0 * self.rank as f64,
                targets: self.targets.clone(),
                amplitude: 0.02,
                seed: i as u64,
            };
            let path = dir.join(&name);
            spec.write(&path, engine.config())?;
            engine.adapters_mut().add(&name, &path)?;
        }
        if engine.gate().is_none() {
            // A rank-8 gate on the adapters' layers for the gate scenario (its values do not change
            // the work done per token).
            let gate = ramole_mole::RouterGate::init(engine.config(), 8, &self.targets, 0, engine.device());
            engine.set_gate(Some(gate));
        }
        Ok(())
    }

    /// The five scenarios over the same prompts: no adapter, one distinct adapter per row, a mixture
    /// of `mix` per row, Arrow over the same `mix` adapters keeping the top ⌈mix/2⌉ per token, and the
    /// RouterLoRA gate over the same `mix` (the gate that [`Self::load_adapters`] sets).
    pub fn scenarios(&self, vocab: usize) -> Vec<Scenario> {
        let mut rng = StdRng::seed_from_u64(42);
        // Ids past the first few (special tokens in real vocabularies), when the vocabulary has them.
        let vocab = u32::try_from(vocab).unwrap_or(u32::MAX).max(1);
        let first = if vocab > 17 { 17 } else { 0 };
        let prompts: Vec<Vec<u32>> =
            (0..self.batch).map(|_| (0..self.prompt_len).map(|_| rng.random_range(first..vocab)).collect()).collect();
        let rows = |row: &dyn Fn(usize) -> RowRequest| -> Vec<Request> {
            prompts
                .iter()
                .enumerate()
                .map(|(i, p)| Request {
                    name: format!("row{i}"),
                    input: RequestInput::Ids(p.clone()),
                    row: row(i),
                    max_new_tokens: self.new_tokens,
                    sampling: Sampling::Greedy,
                })
                .collect()
        };
        let n = self.adapters.max(1);
        let k = self.mix.min(n);
        vec![
            Scenario { label: "base", requests: rows(&|_| RowRequest::default()) },
            Scenario {
                label: "distinct",
                requests: rows(&|i| RowRequest {
                    adapters: vec![(adapter_name(i % n), 1.0)],
                    composition: Composition::Single,
                }),
            },
            Scenario {
                label: "mixture",
                requests: rows(&|i| RowRequest {
                    adapters: (0..k).map(|j| (adapter_name((i + j) % n), 1.0 / k as f32)).collect(),
                    composition: Composition::Mixture,
                }),
            },
            Scenario {
                label: "arrow",
                requests: rows(&|i| RowRequest {
                    adapters: (0..k).map(|j| (adapter_name((i + j) % n), 1.0)).collect(),
                    composition: Composition::Arrow(ArrowParams { top_k: k.div_ceil(2).max(1), temperature: 1.0 }),
                }),
            },
            Scenario {
                label: "gate",
                requests: rows(&|i| RowRequest {
                    adapters: (0..k).map(|j| (adapter_name((i + j) % n), 1.0)).collect(),
                    composition: Composition::Gate,
                }),
            },
        ]
    }
}

/// Runs one scenario and returns its stats; every row must succeed and generate `new_tokens`
/// tokens (end-of-sequence tokens are not special here: the batch always runs to the end).
pub fn run_scenario<B: Backend>(engine: &Engine<B>, scenario: &Scenario) -> Result<RunStats, BatchError> {
    let options = RunOptions { prompt_logits: false, ignore_eos: true, ..RunOptions::default() };
    let (results, stats) = engine.run_with_stats(&scenario.requests, options);
    for r in results {
        r?;
    }
    Ok(stats)
}

fn adapter_name(i: usize) -> String {
    format!("bench_{i:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_of_any_shape_build() {
        for vocab in [1, 2, 17, 18, 512] {
            for (batch, adapters, mix, prompt_len) in [(0, 0, 0, 0), (3, 0, 5, 2), (2, 4, 9, 1)] {
                let bench = DecodeBench { batch, adapters, mix, prompt_len, ..DecodeBench::default() };
                let scenarios = bench.scenarios(vocab);
                assert_eq!(scenarios.len(), 5);
                for s in &scenarios {
                    assert_eq!(s.requests.len(), batch);
                    for r in &s.requests {
                        let RequestInput::Ids(ids) = &r.input else { panic!("ids") };
                        assert_eq!(ids.len(), prompt_len);
                        assert!(ids.iter().all(|&t| (t as usize) < vocab));
                    }
                }
            }
        }
    }
}
