//! The real SmolLM2-135M-Instruct GGUF (fetched through the project's asset cache): logits and greedy
//! tokens equal transformers on the dequantised weights, and the chat answer names Paris.

mod common;

use std::path::PathBuf;

use common::{f32s, token_ids};
use ramole_assets::AssetCache;
use ramole_batch::{Engine, Request, RequestFile, RequestInput, RunOptions, Sampling};
use ramole_core::backend::{Selected, SelectedAutodiff, device};
use ramole_models::linear::WeightFormat;
use ramole_models::tokenizer::chatml_prompt;
use ramole_mole::RowRequest;
use safetensors::SafeTensors;

fn fixture() -> PathBuf {
    common::fixture("smollm2")
}

fn gguf() -> PathBuf {
    AssetCache::from_env().expect("cache").quiet(true).smollm2_gguf().expect("SmolLM2 GGUF fetched")
}

fn engine() -> Engine<Selected> {
    Engine::<Selected>::load(gguf(), &device()).expect("SmolLM2 loads")
}

/// transformers computes on the dequantised weights. Dense, we compute the same products; kept
/// quantized (Q4_1 linears, the Q8_0 embedding and tied LM head), the kernel multiplies the same
/// dequantised values in another order: both must stay within 5e-3 of transformers' logits and give
/// its greedy tokens.
#[test]
fn smollm2_matches_transformers_and_answers_paris() {
    for format in [WeightFormat::Dense, WeightFormat::Quantized] {
        let engine = Engine::<Selected>::load_with(gguf(), &device(), format).expect("SmolLM2 loads");
        let quantized = engine.model().lm_head.is_quantized();
        assert_eq!(quantized, format == WeightFormat::Quantized, "{format:?}");
        assert_eq!(engine.model().model.layers[0].self_attn.q_proj.is_quantized(), quantized);
        matches_transformers(&engine, &format!("{format:?}"));
    }
    // The default on this CPU backend keeps the weights quantized.
    assert!(engine().model().lm_head.is_quantized());
}

/// With the activations rounded to 8 bits per block (llama.cpp's arithmetic), each prompt alone (at
/// most 32 tokens, so its prefill runs the int8 kernel too) stays within `INT8_LOGITS` of
/// transformers' logits and gives its greedy tokens; the f32 path's bound is 5e-3.
#[test]
fn smollm2_with_int8_activations_stays_near_transformers() {
    /// Largest |logit difference| allowed (logits of SmolLM2 span about ±30).
    const INT8_LOGITS: f32 = 2.0;
    let engine = Engine::<Selected>::load_with(gguf(), &device(), WeightFormat::QuantizedInt8).expect("SmolLM2 loads");
    let reference = std::fs::read(fixture().join("reference.safetensors")).expect("reference");
    let reference = SafeTensors::deserialize(&reference).expect("reference file");
    let file = RequestFile::from_file(fixture().join("cases.json")).expect("cases");
    let vocab = engine.config().vocab_size;
    let mut checked = 0;
    for request in &file.requests {
        let Ok(want) = reference.tensor(&format!("logits.{}", request.name)) else { continue };
        let out = engine.run(std::slice::from_ref(request), RunOptions { prompt_logits: true, ..Default::default() });
        let out = out.into_iter().next().expect("one output").expect("request runs");
        let (want, got) = (f32s(&want), out.prompt_logits.as_ref().expect("logits"));
        let got = &got[got.len() - 4 * vocab..];
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
        eprintln!("int8 {}: max |logit diff| {worst}", request.name);
        assert!(worst <= INT8_LOGITS, "int8 {}: max |logit diff| {worst} > {INT8_LOGITS}", request.name);
        let greedy = token_ids(&reference.tensor(&format!("greedy.{}", request.name)).expect("greedy"));
        assert_eq!(out.new_tokens, greedy, "int8 {}: greedy tokens", request.name);
        checked += 1;
    }
    assert_eq!(checked, 2);
}

/// Quantized weights are outside the autodiff graph: loading them for training is refused.
#[test]
fn quantized_weights_are_refused_for_training() {
    let err = ramole_models::CausalLm::<SelectedAutodiff>::load_with(gguf(), &device(), WeightFormat::Quantized)
        .expect_err("quantized on autodiff");
    assert!(err.to_string().contains("dense"), "{err}");
    let lm = ramole_models::CausalLm::<SelectedAutodiff>::load(gguf(), &device()).expect("auto loads dense");
    assert!(!lm.model.lm_head.is_quantized());
}

fn matches_transformers(engine: &Engine<Selected>, what: &str) {
    let reference = std::fs::read(fixture().join("reference.safetensors")).expect("reference");
    let reference = SafeTensors::deserialize(&reference).expect("reference file");
    let file = RequestFile::from_file(fixture().join("cases.json")).expect("cases");
    let vocab = engine.config().vocab_size;

    // The tokenizer rebuilt from the GGUF gives llama.cpp's ids for every prompt.
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("cases.json")).expect("read")).expect("json");
    for case in raw["cases"].as_array().expect("cases") {
        let want: Vec<u32> =
            case["token_ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
        assert_eq!(engine.encode(case["prompt"].as_str().expect("prompt")).expect("encode"), want);
    }

    // All prompts in one batch: the chat prompts' last 4 logits and greedy continuations.
    let outs = engine.run(&file.requests, RunOptions { prompt_logits: true, ..Default::default() });
    let mut checked = 0;
    for out in outs {
        let out = out.expect("request runs");
        let Ok(want) = reference.tensor(&format!("logits.{}", out.name)) else { continue };
        let want = f32s(&want);
        let got = out.prompt_logits.as_ref().expect("logits");
        let got = &got[got.len() - 4 * vocab..];
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 5e-3, "{what} {}: max |logit diff| {worst} > 5e-3", out.name);
        let greedy = token_ids(&reference.tensor(&format!("greedy.{}", out.name)).expect("greedy"));
        assert_eq!(out.new_tokens, greedy, "{what} {}: greedy tokens", out.name);
        checked += 1;
    }
    assert_eq!(checked, 2);

    // The chat answer.
    let request = Request {
        name: "paris".into(),
        input: RequestInput::Prompt(chatml_prompt("What is the capital of France?")),
        row: RowRequest::default(),
        max_new_tokens: 16,
        sampling: Sampling::Greedy,
    };
    let out = engine.run(&[request], RunOptions::default()).remove(0).expect("runs");
    let text = engine.decode(&out.new_tokens).expect("decode");
    assert!(text.contains("Paris"), "{what} answer: {text:?}");
}

/// The gate shipped with the zoo (`zoo/gate`, `ramole train-gate`) loads on SmolLM2 and weighs a row's
/// LoRAs so that the answer differs from the uniform mixture's, with every logit finite.
#[test]
fn the_shipped_gate_loads_and_routes_the_zoo() {
    let mut engine = engine();
    let zoo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../zoo");
    let report = engine.adapters_mut().load_dir(zoo.join("pool/adapters")).expect("zoo adapters");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let gate = ramole_mole::RouterGate::load(&zoo.join("gate"), engine.config(), &device()).expect("zoo/gate");
    assert_eq!(gate.rank(), 8);
    engine.set_gate(Some(gate));
    let row = |composition| Request {
        name: "q".into(),
        input: RequestInput::Prompt(" Q: What is 96 plus 49?\n  A:".into()),
        row: RowRequest {
            adapters: ["2_digit_addition", "2_digit_subtraction", "plural"]
                .iter()
                .map(|a| ((*a).into(), 1.0 / 3.0))
                .collect(),
            composition,
        },
        max_new_tokens: 0,
        sampling: Sampling::Greedy,
    };
    let options = RunOptions { prompt_logits: true, ..Default::default() };
    let logits = |composition| {
        engine.run(&[row(composition)], options).pop().expect("one").expect("runs").prompt_logits.expect("logits")
    };
    let (gated, mixed) =
        (logits(ramole_core::lora::Composition::Gate), logits(ramole_core::lora::Composition::Mixture));
    assert!(gated.iter().all(|v| v.is_finite()));
    let diff = gated.iter().zip(&mixed).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-3, "a trained gate is not the uniform mixture (max diff {diff})");
}
