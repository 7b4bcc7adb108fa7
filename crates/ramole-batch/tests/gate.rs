//! RouterLoRA gate rows through the engine, on the tiny-llama fixture: a fresh gate (`B_g = 0`) is
//! the uniform mixture, a trained-looking gate gives the same numbers alone and beside rows of every
//! other composition, a saved gate loads back to the same numbers, and what the gate cannot serve is
//! refused per request with a reason.

mod common;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use ramole_batch::{BatchError, Engine, Request, RequestFile, RequestInput, RunOptions};
use ramole_core::backend::{Selected, device};
use ramole_core::lora::Composition;
use ramole_models::llama::LinearKind;
use ramole_mole::{RouterGate, RowRequest};

fn engine() -> Engine<Selected> {
    let mut engine = Engine::<Selected>::load(common::fixture("tiny-llama").join("base"), &device()).expect("base");
    let report = engine.adapters_mut().load_dir(common::fixture("tiny-llama").join("adapters")).expect("adapters");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    engine
}

fn request(name: &str, adapters: &[&str], composition: Composition) -> Request {
    let w = 1.0 / adapters.len() as f32;
    Request {
        name: name.into(),
        input: RequestInput::Ids(vec![5, 9, 13, 2, 7, 11]),
        row: RowRequest { adapters: adapters.iter().map(|a| ((*a).to_string(), w)).collect(), composition },
        max_new_tokens: 4,
        sampling: Default::default(),
    }
}

fn logits() -> RunOptions {
    RunOptions { prompt_logits: true, ..Default::default() }
}

fn run_one(engine: &Engine<Selected>, r: &Request) -> Vec<f32> {
    engine.run(std::slice::from_ref(r), logits()).pop().expect("one").expect("runs").prompt_logits.expect("logits")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A gate on every linear layer with deterministic non-zero `B_g` (so it does route).
fn busy_gate(engine: &Engine<Selected>) -> RouterGate<Selected> {
    let mut gate = RouterGate::<Selected>::init(engine.config(), 3, &LinearKind::ALL, 7, &device());
    let mut k = 1u32;
    for l in &mut gate.linears {
        let [d_out, r] = l.gate_b.dims();
        let values: Vec<f32> = (0..d_out * r)
            .map(|_| {
                k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (f64::from(k >> 16) / 65_536.0 - 0.5) as f32 * 4.0
            })
            .collect();
        l.gate_b = Param::from_tensor(Tensor::from_data(TensorData::new(values, [d_out, r]), &device()));
    }
    gate
}

#[test]
fn a_fresh_gate_is_the_uniform_mixture() {
    let mut engine = engine();
    engine.set_gate(Some(RouterGate::init(engine.config(), 4, &LinearKind::ALL, 1, &device())));
    let adapters = ["a0", "a1", "a2"];
    let gated = run_one(&engine, &request("g", &adapters, Composition::Gate));
    let mixture = run_one(&engine, &request("m", &adapters, Composition::Mixture));
    assert!(max_diff(&gated, &mixture) < 1e-5, "B_g = 0: every key is 0, the weights are 1/3");
}

#[test]
fn gate_rows_give_the_same_numbers_alone_and_beside_every_other_composition() {
    let mut engine = engine();
    engine.set_gate(Some(busy_gate(&engine)));
    let gated = request("g", &["a0", "a2", "a3"], Composition::Gate);
    let alone = run_one(&engine, &gated);
    let mixture = run_one(&engine, &request("m", &["a0", "a2", "a3"], Composition::Mixture));
    assert!(max_diff(&alone, &mixture) > 1e-4, "a gate with keys weighs the adapters unevenly");
    let mut batch = RequestFile::from_file(common::fixture("tiny-llama").join("cases.json")).expect("cases").requests;
    batch.insert(2, gated.clone());
    batch.push(request("g2", &["a1"], Composition::Gate));
    let outs = engine.run(&batch, logits());
    let reference = common::Reference::load(&common::fixture("tiny-llama"));
    for out in outs {
        let out = out.expect("runs");
        match out.name.as_str() {
            "g" => assert!(max_diff(out.prompt_logits.as_ref().expect("logits"), &alone) < 1e-4),
            "g2" => {
                // One adapter: the gate gives it weight 1, the single adapter at weight 1.
                let single = run_one(&engine, &request("s", &["a1"], Composition::Single));
                assert!(max_diff(out.prompt_logits.as_ref().expect("logits"), &single) < 1e-4);
            }
            _ => reference.check(&out),
        }
    }
}

#[test]
fn a_saved_gate_loads_back_and_bad_gates_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut engine = engine();
    let gate = busy_gate(&engine);
    let dir = tmp.path().join("gate");
    gate.save(&dir, engine.config(), false).expect("save");
    assert!(gate.save(&dir, engine.config(), false).is_err(), "no overwrite without asking");
    let r = request("g", &["a0", "a1"], Composition::Gate);
    engine.set_gate(Some(gate));
    let before = run_one(&engine, &r);
    let loaded = RouterGate::<Selected>::load(&dir, engine.config(), &device()).expect("load");
    assert_eq!(loaded.rank(), 3);
    engine.set_gate(Some(loaded));
    assert_eq!(run_one(&engine, &r), before, "the same gate, bit for bit");

    // A gate for another model shape, an unknown target, a missing tensor: each names the file.
    let config_path = dir.join("gate_config.json");
    let good = std::fs::read_to_string(&config_path).expect("config");
    for (from, to, says) in [
        ("\"num_hidden_layers\": ", "\"num_hidden_layers\": 9", "blocks"),
        ("\"q_proj\"", "\"qq_proj\"", "unknown target"),
        ("\"rank\": 3", "\"rank\": 2", "gate.safetensors"),
    ] {
        let bad = tmp.path().join(format!("bad-{says}"));
        std::fs::create_dir_all(&bad).expect("mkdir");
        std::fs::copy(dir.join("gate.safetensors"), bad.join("gate.safetensors")).expect("copy");
        std::fs::write(bad.join("gate_config.json"), good.replacen(from, to, 1)).expect("write");
        let err = RouterGate::<Selected>::load(&bad, engine.config(), &device()).expect_err(says).to_string();
        assert!(err.contains(says), "{says}: {err}");
    }
}

#[test]
fn gate_requests_without_a_fitting_gate_fail_alone() {
    let mut engine = engine();
    let plain = request("m", &["a0"], Composition::Mixture);
    let gated = request("g", &["a0", "a1"], Composition::Gate);
    let outs = engine.run(&[plain.clone(), gated.clone()], logits());
    assert!(outs[0].is_ok());
    match &outs[1] {
        Err(BatchError::Request { request, message }) => {
            assert_eq!(request, "g");
            assert!(message.contains("needs a RouterLoRA gate"), "{message}");
        }
        other => panic!("expected a request error, got {other:?}"),
    }
    // A gate on q_proj only cannot weigh a3, which also adapts up_proj.
    engine.set_gate(Some(RouterGate::init(
        engine.config(),
        2,
        &[LinearKind::Q, LinearKind::V, LinearKind::K],
        3,
        &device(),
    )));
    let outs = engine.run(&[request("g3", &["a0", "a3"], Composition::Gate), gated], logits());
    let err = outs[0].as_ref().expect_err("uncovered").to_string();
    assert!(err.contains("`a3`") && err.contains("no parameters for"), "{err}");
    assert!(outs[1].is_ok(), "a0 and a1 adapt q_proj and v_proj only");
    // The request file spells it "gate".
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        file.path(),
        r#"{"cases": [{"name": "x", "input_ids": [1, 2], "adapters": [["a0", 1.0]], "composition": "gate"}]}"#,
    )
    .expect("write");
    let parsed = RequestFile::from_file(file.path()).expect("parses");
    assert_eq!(parsed.requests[0].row.composition, Composition::Gate);
}
