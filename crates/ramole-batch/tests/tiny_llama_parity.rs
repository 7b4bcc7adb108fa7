//! Parity with PyTorch + transformers + PEFT on the tiny random Llama fixture: every case alone and
//! all cases in one heterogeneous batch.

mod common;

use std::path::PathBuf;

use common::{Reference, token_ids};
use ramole_batch::{Engine, RequestFile, RunOptions};
use ramole_core::backend::{Selected, device};
use ramole_models::linear::{LinearWeight, WeightFormat};
use safetensors::SafeTensors;

fn fixture() -> PathBuf {
    common::fixture("tiny-llama")
}

fn engine() -> Engine<Selected> {
    engine_with(WeightFormat::Auto)
}

fn engine_with(format: WeightFormat) -> Engine<Selected> {
    let mut engine =
        Engine::<Selected>::load_with(fixture().join("base"), &device(), format).expect("tiny llama loads");
    let report = engine.adapters_mut().load_dir(fixture().join("adapters")).expect("adapters folder");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.loaded, ["a0", "a1", "a2", "a3"]);
    engine
}

#[test]
fn each_case_alone_matches_reference() {
    let engine = engine();
    let reference = Reference::load(&fixture());
    let file = RequestFile::from_file(fixture().join("cases.json")).expect("cases");
    assert_eq!(file.requests.len(), 8);
    for request in &file.requests {
        let out = engine.run(std::slice::from_ref(request), RunOptions { prompt_logits: true, ..Default::default() });
        let out = out.into_iter().next().expect("one output").expect("request runs");
        reference.check(&out);
    }
}

/// The fixture's f32 weights packed on the host (`Auto` on a CPU backend where the CPU has AVX-512F,
/// which the other tests here run) and on the device (`Dense`) both match the reference.
#[test]
fn packed_and_device_weights_both_match_reference() {
    let reference = Reference::load(&fixture());
    let file = RequestFile::from_file(fixture().join("cases.json")).expect("cases");
    let packs = ramole_core::gemm::available() && ramole_core::backend::runs_on_host::<Selected>();
    for (format, packed) in [(WeightFormat::Auto, packs), (WeightFormat::Dense, false)] {
        let engine = engine_with(format);
        let model = engine.model();
        for w in [&model.model.layers[0].self_attn.q_proj, &model.model.layers[0].mlp.down_proj, &model.lm_head] {
            assert_eq!(matches!(w, LinearWeight::Packed(_)), packed, "{format:?}");
        }
        let outs = engine.run(&file.requests, RunOptions { prompt_logits: true, ..Default::default() });
        for out in outs {
            reference.check(&out.expect("request runs"));
        }
    }
}

#[test]
fn all_cases_in_one_batch_match_reference() {
    let engine = engine();
    let reference = Reference::load(&fixture());
    let mut file = RequestFile::from_file(fixture().join("cases.json")).expect("cases");
    // Twice over, in another order, so rows of every composition sit next to each other.
    let mut again = file.requests.clone();
    again.reverse();
    for r in &mut again {
        r.name.push_str("#2");
    }
    file.requests.extend(again);
    let outs = engine.run(&file.requests, RunOptions { prompt_logits: true, ..Default::default() });
    assert_eq!(outs.len(), 16);
    for out in outs {
        let mut out = out.expect("request runs");
        out.name = out.name.trim_end_matches("#2").to_string();
        reference.check(&out);
    }
}

#[test]
fn rows_that_finish_early_leave_the_batch_without_changing_the_others() {
    let engine = engine();
    let reference = std::fs::read(fixture().join("reference.safetensors")).expect("reference");
    let reference = SafeTensors::deserialize(&reference).expect("reference file");
    let mut file = RequestFile::from_file(fixture().join("cases.json")).expect("cases");
    for (i, r) in file.requests.iter_mut().enumerate() {
        r.max_new_tokens = [0, 3, 8, 1, 5, 8, 2, 7][i];
    }
    let outs = engine.run(&file.requests, RunOptions::default());
    for (request, out) in file.requests.iter().zip(outs) {
        let out = out.expect("runs");
        assert!(out.prompt_logits.is_none());
        let greedy = token_ids(&reference.tensor(&format!("greedy.{}", out.name)).expect("greedy"));
        assert_eq!(out.new_tokens, greedy[..request.max_new_tokens], "{}", out.name);
    }
}

#[test]
fn single_and_mixture_rows_sharing_the_stack_match_reference() {
    let engine = engine();
    let reference = Reference::load(&fixture());
    let mut file = RequestFile::from_file(fixture().join("cases.json")).expect("cases");
    file.requests.retain(|r| r.row.composition != ramole_core::lora::Composition::Fusion);
    // 9 adapter slots over 4 unique adapters, no fusion: the shared layout (stack + mapping matrix).
    let slots: usize = file.requests.iter().map(|r| r.row.adapters.len()).sum();
    assert!(slots >= 2 * 4, "{slots} slots");
    let outs = engine.run(&file.requests, RunOptions { prompt_logits: true, ..Default::default() });
    assert_eq!(outs.len(), 7);
    for out in outs {
        reference.check(&out.expect("request runs"));
    }
}
