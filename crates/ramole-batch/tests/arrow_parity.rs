//! Arrow routing (PEFT's `ArrowConfig`, `tests/data/fixtures/arrow`, made by
//! `tests/data/fixtures/make_arrow_fixture.py`): every case alone, all in one batch, and side by side
//! with the tiny-llama rows of every other composition in one batch.

mod common;

use common::Reference;
use ramole_batch::{Engine, Request, RequestFile, RunOptions};
use ramole_core::backend::{Selected, device};

fn engine() -> Engine<Selected> {
    let mut engine = Engine::<Selected>::load(common::fixture("tiny-llama").join("base"), &device()).expect("base");
    for dir in ["tiny-llama", "arrow"] {
        let report = engine.adapters_mut().load_dir(common::fixture(dir).join("adapters")).expect("adapters");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    }
    engine
}

fn cases(dir: &str) -> Vec<Request> {
    RequestFile::from_file(common::fixture(dir).join("cases.json")).expect("cases").requests
}

fn logits() -> RunOptions {
    RunOptions { prompt_logits: true, ..Default::default() }
}

#[test]
fn each_arrow_case_alone_matches_peft() {
    let engine = engine();
    let reference = Reference::load(&common::fixture("arrow"));
    let requests = cases("arrow");
    assert_eq!(requests.len(), 4);
    for request in &requests {
        assert!(request.row.composition.is_routed(), "{}", request.name);
        let out = engine.run(std::slice::from_ref(request), logits()).pop().expect("one output").expect("runs");
        reference.check(&out);
    }
}

#[test]
fn arrow_rows_beside_single_mixture_and_fusion_rows_match_their_references() {
    let engine = engine();
    let arrow_ref = Reference::load(&common::fixture("arrow"));
    let tiny_ref = Reference::load(&common::fixture("tiny-llama"));
    let arrow = cases("arrow");
    let tiny = cases("tiny-llama");
    // Interleaved: arrow, tiny, arrow, tiny, …, then the rest.
    let mut batch = Vec::new();
    let (mut a, mut t) = (arrow.iter(), tiny.iter());
    loop {
        match (a.next(), t.next()) {
            (None, None) => break,
            (x, y) => batch.extend(x.into_iter().chain(y).cloned()),
        }
    }
    let outs = engine.run(&batch, logits());
    assert_eq!(outs.len(), arrow.len() + tiny.len());
    for out in outs {
        let out = out.expect("runs");
        if out.name.starts_with("arrow_") { arrow_ref.check(&out) } else { tiny_ref.check(&out) }
    }
}

#[test]
fn an_arrow_row_that_keeps_every_adapter_is_a_token_weighted_mixture() {
    // top_k = all four: nothing is dropped, the weights are the softmax of all scores. Checked
    // against the same row with top_k 2 (the fixture's): the outputs must differ, and each must
    // stay finite.
    let engine = engine();
    let mut request = cases("arrow").remove(0);
    let out2 = engine.run(std::slice::from_ref(&request), logits()).pop().expect("one").expect("runs");
    if let ramole_core::lora::Composition::Arrow(p) = &mut request.row.composition {
        p.top_k = 4;
    }
    let out4 = engine.run(std::slice::from_ref(&request), logits()).pop().expect("one").expect("runs");
    let (l2, l4) = (out2.prompt_logits.expect("logits"), out4.prompt_logits.expect("logits"));
    assert!(l4.iter().all(|x| x.is_finite()));
    assert!(l2.iter().zip(&l4).any(|(a, b)| (a - b).abs() > 1e-4), "top_k changes the output");
}
