//! RouterLoRA gate training on the tiny Llama fixture and its four adapters: the loss goes down with
//! the base and the adapters frozen, the run is deterministic for its seed, the trained gate saves and
//! loads back to the same parameters, and examples the gate cannot serve are refused up front.

use std::path::PathBuf;

use ramole_core::backend::{Selected, SelectedAutodiff, device};
use ramole_models::CausalLm;
use ramole_models::llama::LinearKind;
use ramole_mole::AdapterPool;
use ramole_mole::gate::{GateExample, GateTrainConfig, RouterGate, train_gate};
use ramole_mole::train::TokenizedExample;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama").join(rel)
}

fn pool(config: &ramole_models::llama::LlamaConfig) -> AdapterPool {
    let mut pool = AdapterPool::new(config.clone());
    let report = pool.load_dir(fixture("adapters")).expect("adapters");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    pool
}

/// Examples whose retrieved set is a0, a1 and a2 (q/k/v/o adapters).
fn examples(n: usize) -> Vec<GateExample> {
    let mut rng = StdRng::seed_from_u64(5);
    (0..n)
        .map(|_| {
            let input: Vec<u32> = (0..6).map(|_| rng.random_range(10..200)).collect();
            let last = input[input.len() - 1];
            let (example, _) = TokenizedExample::new(&input, &[last + 1, last + 3], 2, 32).expect("fits");
            GateExample { example, adapters: vec!["a0".into(), "a1".into(), "a2".into()] }
        })
        .collect()
}

fn cfg() -> GateTrainConfig {
    GateTrainConfig {
        rank: 4,
        targets: vec![LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O],
        steps: 25,
        batch_size: 6,
        lr: 5e-2,
        dropout: 0.0,
        ..GateTrainConfig::default()
    }
}

#[test]
fn the_gate_learns_with_everything_else_frozen_and_round_trips() {
    let dev = device();
    let lm = CausalLm::<SelectedAutodiff>::load(fixture("base"), &dev).expect("tiny");
    let pool = pool(&lm.config);
    let data = examples(6);
    let (gate, report) =
        train_gate(lm.model.clone(), &lm.config, &pool, &data, &cfg(), &dev, &mut |_| {}).expect("train");
    assert_eq!(report.losses.len(), 25);
    let (first, last) = (report.losses[0], report.losses[24]);
    eprintln!("gate: loss {first:.4} -> {last:.4}");
    // Every step sees the same 6 examples with the same sets: the same objective, going down.
    assert!(last < first - 1e-3, "loss {first} -> {last}");
    assert_eq!(gate.rank(), 4);
    assert_eq!(gate.targets(), vec![LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O]);

    // Deterministic for the seed, with dropout on (a different draw per step, the same per run).
    let noisy = GateTrainConfig { dropout: 0.5, steps: 4, ..cfg() };
    let run = || {
        let lm = CausalLm::<SelectedAutodiff>::load(fixture("base"), &dev).expect("tiny");
        train_gate(lm.model, &lm.config, &pool, &data, &noisy, &dev, &mut |_| {}).expect("train").1.losses
    };
    assert_eq!(run(), run());

    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("gate");
    gate.save(&dir, &lm.config, false).expect("save");
    let loaded = RouterGate::<Selected>::load(&dir, &lm.config, &dev).expect("load");
    let host = |g: &RouterGate<Selected>| -> Vec<f32> {
        g.linears
            .iter()
            .flat_map(|l| {
                let a: Vec<f32> = l.gate_a.val().into_data().iter::<f32>().collect();
                let b: Vec<f32> = l.gate_b.val().into_data().iter::<f32>().collect();
                a.into_iter().chain(b)
            })
            .collect()
    };
    let trained = host(&gate);
    assert_eq!(host(&loaded), trained);
    assert!(trained.iter().all(|v| v.is_finite()));
}

#[test]
fn examples_the_gate_cannot_serve_are_refused() {
    let dev = device();
    let lm = CausalLm::<SelectedAutodiff>::load(fixture("base"), &dev).expect("tiny");
    let pool = pool(&lm.config);
    let mut data = examples(2);
    data[1].adapters.push("a3".into()); // a3 adapts up_proj, gate_proj and down_proj too
    let err = train_gate(lm.model.clone(), &lm.config, &pool, &data, &cfg(), &dev, &mut |_| {}).expect_err("a3");
    assert!(err.to_string().contains("`a3`") && err.to_string().contains("does not target"), "{err}");
    data[1].adapters = vec!["nope".into()];
    let err = train_gate(lm.model.clone(), &lm.config, &pool, &data, &cfg(), &dev, &mut |_| {}).expect_err("unknown");
    assert!(err.to_string().contains("`nope`"), "{err}");
    let bad = GateTrainConfig { dropout: 1.0, ..cfg() };
    assert!(train_gate(lm.model, &lm.config, &pool, &examples(2), &bad, &dev, &mut |_| {}).is_err());
}
