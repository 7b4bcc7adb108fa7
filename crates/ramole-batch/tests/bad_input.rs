//! Bad input gets a typed error naming the file, tensor or request, and nothing else in the batch
//! or the loaded pool is affected.

mod common;

use std::path::{Path, PathBuf};

use ramole_batch::{BatchError, Engine, Request, RequestFile, RequestInput, RunOptions, Sampling};
use ramole_core::backend::{Selected, device};
use ramole_models::ModelError;
use ramole_mole::{MoleError, RowRequest};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

fn fixture() -> PathBuf {
    common::fixture("tiny-llama")
}

fn engine_with(adapters: &[&str]) -> Engine<Selected> {
    let mut engine = Engine::<Selected>::load(fixture().join("base"), &device()).expect("tiny llama");
    for name in adapters {
        engine.adapters_mut().add(name, fixture().join("adapters").join(name)).expect("adapter");
    }
    engine
}

/// Copies adapter `src` into `dir/name`, rewriting its weights with `edit(name, shape, values)`.
fn edited_adapter(dir: &Path, name: &str, src: &str, edit: impl Fn(&str, &mut Vec<usize>, &mut Vec<f32>)) -> PathBuf {
    let from = fixture().join("adapters").join(src);
    let to = dir.join(name);
    std::fs::create_dir_all(&to).expect("mkdir");
    std::fs::copy(from.join("adapter_config.json"), to.join("adapter_config.json")).expect("copy");
    let bytes = std::fs::read(from.join("adapter_model.safetensors")).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (key, view) in st.tensors() {
        let mut shape = view.shape().to_vec();
        let mut values: Vec<f32> = common::f32s(&view);
        edit(&key, &mut shape, &mut values);
        tensors.push((key, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(k, s, b)| (k.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("view"))).collect();
    safetensors::serialize_to_file(views, None, &to.join("adapter_model.safetensors")).expect("write");
    to
}

#[test]
fn bad_adapters_are_refused_and_the_pool_is_unchanged() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut engine = engine_with(&["a0"]);
    let before: Vec<String> = engine.adapters().names().map(String::from).collect();

    // Shapes that do not fit the base model.
    let wrong = edited_adapter(dir.path(), "wrong_shape", "a0", |key, shape, values| {
        if key.contains("layers.1.self_attn.v_proj.lora_B") {
            shape[0] += 1;
            values.extend(std::iter::repeat_n(0.0, shape[1]));
        }
    });
    let err = engine.adapters_mut().add("wrong_shape", &wrong).expect_err("shape mismatch");
    assert!(
        matches!(&err, MoleError::Tensor { tensor, path, .. } if tensor.contains("layers.1.self_attn.v_proj.lora_B") && path.starts_with(&wrong)),
        "{err}"
    );

    // NaN / Inf weights.
    let nan = edited_adapter(dir.path(), "nan", "a0", |key, _, values| {
        if key.contains("layers.0.self_attn.q_proj.lora_A") {
            values[3] = f32::NAN;
        }
    });
    let err = engine.adapters_mut().add("nan", &nan).expect_err("NaN");
    assert!(
        matches!(&err, MoleError::Tensor { tensor, .. } if tensor.contains("layers.0.self_attn.q_proj.lora_A")),
        "{err}"
    );
    assert!(err.to_string().contains("non-finite"), "{err}");

    // Truncated weights file.
    let truncated = edited_adapter(dir.path(), "truncated", "a0", |_, _, _| {});
    let file = truncated.join("adapter_model.safetensors");
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("write");
    let err = engine.adapters_mut().add("truncated", &truncated).expect_err("truncated");
    assert!(matches!(&err, MoleError::Model(ModelError::Format { path, .. }) if *path == file), "{err}");

    // An option we do not implement.
    let dora = edited_adapter(dir.path(), "dora", "a0", |_, _, _| {});
    let cfg = dora.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).expect("read").replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(&cfg, text).expect("write");
    let err = engine.adapters_mut().add("dora", &dora).expect_err("DoRA");
    assert!(matches!(&err, MoleError::Unsupported { option, .. } if option == "use_dora"), "{err}");

    // A missing folder, and a duplicate name.
    assert!(matches!(engine.adapters_mut().add("ghost", dir.path().join("ghost")), Err(MoleError::Io { .. })));
    assert!(matches!(engine.adapters_mut().add("a0", fixture().join("adapters/a1")), Err(MoleError::Duplicate(_))));

    let after: Vec<String> = engine.adapters().names().map(String::from).collect();
    assert_eq!(before, after, "failed loads leave the pool unchanged");

    // A folder of adapters where some are bad: the good ones load, the bad ones are reported.
    let mut engine = engine_with(&[]);
    let mixed = tempfile::tempdir().expect("tmp");
    edited_adapter(mixed.path(), "good", "a1", |_, _, _| {});
    edited_adapter(mixed.path(), "bad", "a1", |_, _, values| values[0] = f32::INFINITY);
    let report = engine.adapters_mut().load_dir(mixed.path()).expect("folder");
    assert_eq!(report.loaded, ["good"]);
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].0.ends_with("bad"));
}

fn request(name: &str, input: RequestInput, adapters: &[(&str, f32)], max_new_tokens: usize) -> Request {
    Request {
        name: name.into(),
        input,
        row: RowRequest {
            adapters: adapters.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
            composition: if adapters.len() > 1 { ramole_core::lora::Composition::Mixture } else { Default::default() },
        },
        max_new_tokens,
        sampling: Sampling::Greedy,
    }
}

#[test]
fn bad_requests_fail_alone_and_the_rest_of_the_batch_is_unchanged() {
    let mut engine = engine_with(&[]);
    engine.adapters_mut().load_dir(fixture().join("adapters")).expect("adapters");
    let file = RequestFile::from_file(fixture().join("cases.json")).expect("cases");
    let good: Vec<Request> = file.requests.clone();
    let alone = engine.run(&good, RunOptions { prompt_logits: true, ..Default::default() });

    let ctx = engine.config().max_position_embeddings;
    let bad = vec![
        request("unknown_adapter", RequestInput::Ids(vec![5, 6]), &[("a0", 0.5), ("nope", 0.5)], 2),
        request("empty", RequestInput::Ids(vec![]), &[], 2),
        request("too_long", RequestInput::Ids(vec![7; ctx]), &[], 1),
        request("out_of_vocab", RequestInput::Ids(vec![5, 100_000]), &[], 0),
        request("no_tokenizer", RequestInput::Prompt("hello".into()), &[], 0),
    ];
    let mut mixed = bad.clone();
    mixed.splice(2..2, good.iter().cloned());
    let results = engine.run(&mixed, RunOptions { prompt_logits: true, ..Default::default() });
    assert_eq!(results.len(), mixed.len());
    let mut good_outputs = Vec::new();
    for (req, res) in mixed.iter().zip(results) {
        if bad.iter().any(|b| b.name == req.name) {
            let err = res.expect_err(&req.name);
            let text = err.to_string();
            assert!(text.contains(&req.name), "error names the request: {text}");
            match req.name.as_str() {
                "unknown_adapter" => assert!(
                    matches!(&err, BatchError::Mole(MoleError::UnknownAdapter { adapter, .. }) if adapter == "nope"),
                    "{err}"
                ),
                "empty" => assert!(text.contains("empty prompt"), "{text}"),
                "too_long" => assert!(text.contains("exceeds the context"), "{text}"),
                "out_of_vocab" => assert!(text.contains("outside the vocabulary"), "{text}"),
                _ => assert!(text.contains("tokenizer"), "{text}"),
            }
        } else {
            good_outputs.push(res.expect("good request runs"));
        }
    }
    let alone: Vec<_> = alone.into_iter().map(|r| r.expect("runs")).collect();
    assert_eq!(alone.len(), good_outputs.len());
    for (a, b) in alone.iter().zip(&good_outputs) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.new_tokens, b.new_tokens, "{}", a.name);
        let worst = a
            .prompt_logits
            .iter()
            .flatten()
            .zip(b.prompt_logits.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{}: {worst}", a.name);
    }
}

#[test]
fn bad_model_files_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).expect("mkdir");
    std::fs::copy(fixture().join("base/config.json"), base.join("config.json")).expect("copy");
    let bytes = std::fs::read(fixture().join("base/model.safetensors")).expect("read");
    std::fs::write(base.join("model.safetensors"), &bytes[..bytes.len() - 100]).expect("write");
    let err = Engine::<Selected>::load(&base, &device()).expect_err("truncated");
    assert!(
        matches!(&err, BatchError::Models(ModelError::Format { path, .. }) if path.ends_with("model.safetensors")),
        "{err}"
    );

    let gguf = dir.path().join("model.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00 truncated").expect("write");
    let err = Engine::<Selected>::load(&gguf, &device()).expect_err("truncated GGUF");
    assert!(err.to_string().contains("model.gguf"), "{err}");

    let err = Engine::<Selected>::load(dir.path().join("absent"), &device()).expect_err("absent");
    assert!(matches!(&err, BatchError::Models(ModelError::Io { path, .. }) if path.ends_with("absent")), "{err}");
}

fn engine_with_fixture_adapters() -> Engine<Selected> {
    let mut engine = engine_with(&[]);
    engine.adapters_mut().load_dir(fixture().join("adapters")).expect("adapters");
    engine
}

fn with_logits() -> RunOptions {
    RunOptions { prompt_logits: true, ..Default::default() }
}

/// Largest absolute difference of two outputs' prompt logits.
fn logits_gap(a: &ramole_batch::RequestOutput, b: &ramole_batch::RequestOutput) -> f32 {
    let (x, y) = (a.prompt_logits.as_deref().expect("logits"), b.prompt_logits.as_deref().expect("logits"));
    assert_eq!(x.len(), y.len(), "{}", a.name);
    x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max)
}

/// Each request of `batch` that succeeded gives what it gives alone (same tokens, logits within 1e-4).
fn assert_same_as_alone(
    engine: &Engine<Selected>,
    batch: &[Request],
    results: &[Result<ramole_batch::RequestOutput, BatchError>],
) {
    for (req, res) in batch.iter().zip(results) {
        let Ok(out) = res else { continue };
        let alone = engine.run(std::slice::from_ref(req), with_logits()).pop().expect("one").expect("runs alone");
        assert_eq!(out.new_tokens, alone.new_tokens, "{}", req.name);
        assert!(logits_gap(out, &alone) < 1e-4, "{}", req.name);
    }
}

// Issue 6: a request without `greedy_new_tokens` (README examples `b` and `c`) panicked in
// `Tensor::cat` of an empty list when no row of the batch decodes.
#[test]
fn batches_where_no_row_decodes_or_all_rows_stop_together_run() {
    let engine = engine_with_fixture_adapters();
    let readme = RequestFile::from_json(
        r#"{"cases": [
          {"name": "b", "input_ids": [5, 9, 13], "adapters": [["a1", 0.6], ["a2", 0.4]], "composition": "mixture"},
          {"name": "c", "input_ids": [7, 7], "adapters": [["a0", 0.7], ["a1", 0.3]], "composition": "fusion"}
        ]}"#,
    )
    .expect("README examples b and c");
    for options in [with_logits(), RunOptions::default()] {
        let results = engine.run(&readme.requests, options);
        for (req, res) in readme.requests.iter().zip(&results) {
            let out = res.as_ref().expect("no row decodes: runs");
            assert!(out.new_tokens.is_empty(), "{}", req.name);
            assert_eq!(out.prompt_logits.is_some(), options.prompt_logits);
        }
        // One alone too (the batch of one row that does not decode).
        let alone = engine.run(&readme.requests[1..], options);
        assert!(alone[0].as_ref().is_ok_and(|o| o.new_tokens.is_empty()));
    }
    let with = engine.run(&readme.requests, with_logits());
    assert_same_as_alone(&engine, &readme.requests, &with);

    // Every row stops after its first token: the batch ends before any decoding step.
    let fixture_cases = RequestFile::from_file(fixture().join("cases.json")).expect("cases").requests;
    let full = engine.run(&fixture_cases, RunOptions::default());
    let mut one_each = fixture_cases.clone();
    for r in &mut one_each {
        r.max_new_tokens = 1;
    }
    let (results, stats) = engine.run_with_stats(&one_each, RunOptions::default());
    assert_eq!(stats.decode_steps, 0);
    for (a, b) in results.iter().zip(&full) {
        let (a, b) = (a.as_ref().expect("runs"), b.as_ref().expect("runs"));
        assert_eq!(a.new_tokens, b.new_tokens[..1], "{}", a.name);
    }

    // Rows that decode next to rows that do not: each as alone.
    let mut mixed = readme.requests.clone();
    mixed.splice(1..1, fixture_cases.iter().take(3).cloned());
    let results = engine.run(&mixed, with_logits());
    assert!(results.iter().all(Result::is_ok));
    assert_same_as_alone(&engine, &mixed, &results);

    // No request at all, and only requests that fail validation.
    assert!(engine.run(&[], with_logits()).is_empty());
    let (results, stats) = engine.run_with_stats(&[request("empty", RequestInput::Ids(vec![]), &[], 0)], with_logits());
    assert!(results[0].is_err());
    assert_eq!(stats.rows, 0);
}

// Issue 6: `prompt length + max_new_tokens` wrapped around for a huge budget, the context check
// passed and decoding never ended.
#[test]
fn huge_token_budgets_are_refused_per_request() {
    let engine = engine_with_fixture_adapters();
    let ctx = engine.config().max_position_embeddings;
    let ids = vec![5u32, 9, 13];
    let budgets = [usize::MAX, usize::MAX - 1, usize::MAX - 2, usize::MAX / 2 + 1, ctx - ids.len() + 1];
    let mut batch: Vec<Request> = budgets
        .iter()
        .enumerate()
        .map(|(i, &n)| request(&format!("huge{i}"), RequestInput::Ids(ids.clone()), &[], n))
        .collect();
    batch.push(request("fits", RequestInput::Ids(ids.clone()), &[("a0", 1.0)], 4));
    let start = std::time::Instant::now();
    let results = engine.run(&batch, RunOptions::default());
    assert!(start.elapsed().as_secs() < 60, "refused at once, not decoded");
    for (req, res) in batch.iter().zip(&results) {
        if req.name == "fits" {
            assert_eq!(res.as_ref().expect("runs").new_tokens.len(), 4);
        } else {
            let err = res.as_ref().expect_err(&req.name);
            assert!(matches!(err, BatchError::Request { request, .. } if *request == req.name), "{err}");
            assert!(err.to_string().contains("exceeds the context"), "{err}");
        }
    }
    // The same from a request file.
    let file = RequestFile::from_json(
        r#"{"cases": [{"name": "x", "input_ids": [1, 2], "greedy_new_tokens": 18446744073709551615}]}"#,
    )
    .expect("parses");
    assert_eq!(file.requests[0].max_new_tokens, usize::MAX);
    let err = engine.run(&file.requests, RunOptions::default()).pop().expect("one").expect_err("refused");
    assert!(err.to_string().contains("request `x`") && err.to_string().contains("exceeds the context"), "{err}");
    // Exactly the context: runs (to the end of the context at most).
    let exact = request("exact", RequestInput::Ids(ids.clone()), &[], ctx - ids.len());
    let out = engine.run(&[exact], RunOptions { ignore_eos: true, ..Default::default() }).pop().expect("one");
    assert_eq!(out.expect("fits the context").new_tokens.len(), ctx - ids.len());
}

// Issue 6: adapter weights of 1e30 gave NaN or all-zero logits, and exit 0.
#[test]
fn rows_whose_logits_diverge_fail_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut engine = engine_with_fixture_adapters();
    // An adapter whose weights are finite but huge is refused when it loads (issue 25: its update would
    // overflow f32 in every forward pass that uses it), naming the file and why.
    let huge = edited_adapter(dir.path(), "huge", "a0", |_, _, values| values.iter_mut().for_each(|v| *v *= 1e30));
    let err = engine.adapters_mut().add("huge", &huge).expect_err("a huge update is refused");
    assert!(err.to_string().contains("adapter_model.safetensors") && err.to_string().contains("norm"), "{err}");

    let good = RequestFile::from_file(fixture().join("cases.json")).expect("cases").requests;
    let alone = engine.run(&good, with_logits());
    let diverging = vec![
        request("w1e30", RequestInput::Ids(vec![5, 9, 13]), &[("a0", 1e30)], 3),
        request("w1e30_prompt_only", RequestInput::Ids(vec![5, 9]), &[("a0", -1e30)], 0),
        request("mixture_1e30", RequestInput::Ids(vec![11, 3]), &[("a1", 0.5), ("a2", 1e30)], 2),
    ];
    for options in [with_logits(), RunOptions::default()] {
        let mut mixed = diverging.clone();
        mixed.splice(2..2, good.iter().cloned());
        let results = engine.run(&mixed, options);
        let mut ok = Vec::new();
        for (req, res) in mixed.iter().zip(results) {
            if diverging.iter().any(|d| d.name == req.name) {
                let err = res.expect_err(&req.name);
                assert!(
                    matches!(&err, BatchError::Numerical { request, .. } if *request == req.name),
                    "{}: {err}",
                    req.name
                );
                assert!(err.to_string().contains("after the prefill"), "{err}");
            } else {
                ok.push(res.expect("the other rows run"));
            }
        }
        // The other rows give exactly what they give alone.
        for (a, b) in alone.iter().zip(&ok) {
            let a = a.as_ref().expect("runs");
            assert_eq!(a.new_tokens, b.new_tokens, "{}", a.name);
            if options.prompt_logits {
                assert!(logits_gap(a, b) < 1e-4, "{}", a.name);
            }
        }
    }

    // A row that is fine after the prefill and diverges at a decoding step leaves the batch then.
    let prompt = [5u32, 9, 13];
    let late = late_diverging_adapter(dir.path(), &prompt);
    engine.adapters_mut().add("late", &late).expect("finite weights load");
    let mut mixed = good.clone();
    // Its factors are of ordinary size; the request's weight makes the update overflow.
    mixed.insert(1, request("late", RequestInput::Ids(prompt.to_vec()), &[("late", 1e22)], 6));
    let results = engine.run(&mixed, RunOptions { prompt_logits: true, ignore_eos: true, ..RunOptions::default() });
    let err = results[1].as_ref().expect_err("diverges while decoding");
    assert!(matches!(err, BatchError::Numerical { request, .. } if request == "late"), "{err}");
    assert!(err.to_string().contains("after decoding step"), "{err}");
    let again = engine.run(&good, RunOptions { prompt_logits: true, ignore_eos: true, ..RunOptions::default() });
    for (a, b) in again.iter().zip(results.iter().filter(|r| r.as_ref().is_ok_and(|o| o.name != "late"))) {
        let (a, b) = (a.as_ref().expect("runs"), b.as_ref().expect("runs"));
        assert_eq!(a.new_tokens, b.new_tokens, "{}", a.name);
        assert!(logits_gap(a, b) < 1e-4, "{}", a.name);
    }

    // Weights that are not numbers once multiplied by the adapter's scale are refused up front.
    for (w, what) in [(f32::INFINITY, "inf"), (f32::NAN, "NaN"), (f32::MAX, "max")] {
        let req = request("bad_weight", RequestInput::Ids(vec![5]), &[("a0", w)], 1);
        let err = engine.run(&[req], RunOptions::default()).pop().expect("one").expect_err(what);
        assert!(
            matches!(&err, BatchError::Mole(MoleError::Request { request, .. }) if request == "bad_weight"),
            "{err}"
        );
        assert!(err.to_string().contains("adapter `a0`") && err.to_string().contains("not a finite"), "{err}");
    }
}

/// An adapter (from `a0`: q/v of both layers, rank 4) whose only non-zero update is layer 0's
/// `v_proj`, with unit `A` rows orthogonal to the normalised embeddings of the `prompt` tokens: with a huge
/// request weight the prefill stays finite, and the first generated token outside the prompt overflows f32.
fn late_diverging_adapter(dir: &Path, prompt: &[u32]) -> PathBuf {
    let bytes = std::fs::read(fixture().join("base/model.safetensors")).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid");
    let embed = common::f32s(&st.tensor("model.embed_tokens.weight").expect("embed"));
    let gamma = common::f32s(&st.tensor("model.layers.0.input_layernorm.weight").expect("norm"));
    let d = gamma.len();
    // Gram-Schmidt in f64: the prompt directions, then the adapter's rows orthogonal to them.
    let mut basis: Vec<Vec<f64>> = Vec::new();
    let mut orthogonalise = |mut v: Vec<f64>, keep: bool| -> Vec<f64> {
        for b in &basis {
            let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        if keep {
            basis.push(v.clone());
        }
        v
    };
    for &t in prompt {
        let row = &embed[t as usize * d..(t as usize + 1) * d];
        orthogonalise(row.iter().zip(&gamma).map(|(e, g)| f64::from(e * g)).collect(), true);
    }
    let rows: Vec<Vec<f64>> =
        (0..4).map(|k| orthogonalise((0..d).map(|j| ((j * 7 + k * 13) % 11) as f64 - 5.0).collect(), true)).collect();
    edited_adapter(dir, "late", "a0", |key, shape, values| {
        if key.contains("layers.0.self_attn.v_proj.lora_A") {
            assert_eq!(*shape, [4, d]);
            *values = rows.iter().flatten().map(|&x| x as f32).collect();
        } else if key.contains("layers.0.self_attn.v_proj.lora_B") {
            values.iter_mut().for_each(|v| *v = 1.0);
        } else {
            values.iter_mut().for_each(|v| *v = 0.0);
        }
    })
}

// Issue 6: "adapter 0 listed twice" named an index; a failed load was reported as an unknown adapter;
// `--adapters` at one adapter's folder loaded nothing.
#[test]
fn adapter_errors_name_the_adapter_and_why() {
    let engine = engine_with_fixture_adapters();
    let twice = request("twice", RequestInput::Ids(vec![5]), &[("a1", 0.5), ("a0", 0.2), ("a1", 0.5)], 0);
    let err = engine.run(&[twice], RunOptions::default()).pop().expect("one").expect_err("duplicate");
    assert_eq!(err.to_string(), "request `twice`: adapter `a1` is listed twice");

    let dir = tempfile::tempdir().expect("tmp");
    edited_adapter(dir.path(), "good", "a1", |_, _, _| {});
    edited_adapter(dir.path(), "bad", "a1", |_, _, values| values[0] = f32::NAN);
    let mut engine = engine_with(&[]);
    let report = engine.adapters_mut().load_dir(dir.path()).expect("folder");
    assert_eq!(report.loaded, ["good"]);
    let why = engine.adapters().load_error("bad").expect("remembered").to_string();
    assert!(why.contains("non-finite"), "{why}");
    let uses_bad = request("uses_bad", RequestInput::Ids(vec![5]), &[("bad", 1.0)], 0);
    let uses_ghost = request("uses_ghost", RequestInput::Ids(vec![5]), &[("ghost", 1.0)], 0);
    let results = engine.run(&[uses_bad, uses_ghost], RunOptions::default());
    let err = results[0].as_ref().expect_err("bad");
    assert!(
        matches!(err, BatchError::Mole(MoleError::AdapterNotLoaded { request, adapter, .. }) if request == "uses_bad" && adapter == "bad"),
        "{err}"
    );
    assert_eq!(err.to_string(), format!("request `uses_bad`: adapter `bad` failed to load: {why}"));
    let err = results[1].as_ref().expect_err("ghost");
    assert!(matches!(err, BatchError::Mole(MoleError::UnknownAdapter { adapter, .. }) if adapter == "ghost"), "{err}");
    // Loading it under that name later clears the failure.
    engine.adapters_mut().add("bad", fixture().join("adapters/a1")).expect("loads");
    assert!(engine.adapters().load_error("bad").is_none());

    // A folder that is one adapter loads as that adapter, named by the folder.
    let mut engine = engine_with(&[]);
    let report = engine.adapters_mut().load_dir(fixture().join("adapters/a2")).expect("one adapter");
    assert_eq!(report.loaded, ["a2"]);
    assert!(report.failed.is_empty());
    let out = engine.run(&[request("x", RequestInput::Ids(vec![5, 6]), &[("a2", 1.0)], 1)], RunOptions::default());
    assert!(out[0].is_ok());
    // A folder with no adapter at all is an error.
    let empty = tempfile::tempdir().expect("tmp");
    std::fs::write(empty.path().join("notes.txt"), "no adapters").expect("write");
    let err = engine.adapters_mut().load_dir(empty.path()).expect_err("no adapters");
    assert!(matches!(&err, MoleError::NoAdapters { path, .. } if path == empty.path()), "{err}");
    assert!(err.to_string().contains("no adapters"), "{err}");
}

/// A tokenizer for the tiny model (word level, with one special token), so prompts work.
pub const TINY_TOKENIZER: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{"id": 3, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": true},
                   {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": true}],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "Plural": 1, "</s>": 2, "<|im_start|>": 3, "of": 4,
            "mouse": 5, ":": 6, "hello": 7}, "unk_token": "<unk>"}}"#;

#[test]
fn prompts_sampling_and_request_files_at_the_edges() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().join("base");
    std::fs::create_dir(&base).expect("mkdir");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join("base").join(f), base.join(f)).expect("copy");
    }
    std::fs::write(base.join("tokenizer.json"), TINY_TOKENIZER).expect("write");
    let mut engine = Engine::<Selected>::load(&base, &device()).expect("with tokenizer");
    engine.adapters_mut().load_dir(fixture().join("adapters")).expect("adapters");

    let prompt = |name: &str, text: &str, n: usize| request(name, RequestInput::Prompt(text.into()), &[], n);
    let mut batch = vec![
        prompt("special_only", "<|im_start|>", 3),
        prompt("specials", "<|im_start|></s><|im_start|>", 2),
        prompt("unknown_words", "zebra zebra", 1),
        prompt("empty", "", 2),
        prompt("spaces", "   \n\t ", 2),
    ];
    // README example `b`, as written (a prompt, a mixture, no `greedy_new_tokens`).
    let readme_b = RequestFile::from_json(
        r#"{"cases": [{"name": "b", "prompt": "Plural of mouse:", "adapters": [["a1", 0.6], ["a2", 0.4]], "composition": "mixture"}]}"#,
    )
    .expect("example b");
    batch.extend(readme_b.requests);
    let sampled = |name: &str, temperature: f32, top_p: f32| Request {
        sampling: Sampling::TopP { temperature, top_p, seed: 1 },
        ..prompt(name, "hello of", 3)
    };
    batch.extend([
        sampled("t0", 0.0, 0.9),
        sampled("t_neg", -1.0, 0.9),
        sampled("t_nan", f32::NAN, 0.9),
        sampled("p0", 1.0, 0.0),
        sampled("p_big", 1.0, 1.5),
        sampled("tiny_t", 1e-30, 1.0),
        sampled("huge_t", 1e30, 1e-30),
    ]);
    let results = engine.run(&batch, with_logits());
    for (req, res) in batch.iter().zip(&results) {
        match req.name.as_str() {
            "empty" | "spaces" => {
                let err = res.as_ref().expect_err(&req.name).to_string();
                assert_eq!(err, format!("request `{}`: empty prompt", req.name));
            }
            "t0" | "t_neg" | "t_nan" => {
                let err = res.as_ref().expect_err(&req.name).to_string();
                assert!(err.contains("temperature") && err.contains(&req.name), "{err}");
            }
            "p0" | "p_big" => {
                let err = res.as_ref().expect_err(&req.name).to_string();
                assert!(err.contains("top_p") && err.contains(&req.name), "{err}");
            }
            _ => {
                let out = res.as_ref().unwrap_or_else(|e| panic!("{}: {e}", req.name));
                assert!(out.new_tokens.len() <= req.max_new_tokens);
                assert!(out.new_tokens.iter().all(|&t| (t as usize) < engine.config().vocab_size));
                engine.decode(&out.new_tokens).expect("decodes");
            }
        }
    }
    let special = results[0].as_ref().expect("runs");
    assert_eq!(special.prompt_ids, [3]);
    assert_eq!(results[5].as_ref().expect("b").prompt_ids, [1, 4, 5, 6]);

    // Request files: a BOM, a FIFO and a folder (refused at once, not read).
    let bom = dir.path().join("bom.json");
    std::fs::write(&bom, "\u{feff}{\"cases\": [{\"name\": \"a\", \"input_ids\": [1]}]}").expect("write");
    assert_eq!(RequestFile::from_file(&bom).expect("BOM dropped").requests.len(), 1);
    let err = RequestFile::from_file(dir.path()).expect_err("a folder");
    assert!(matches!(&err, BatchError::Io { path, .. } if path == dir.path()), "{err}");
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo.json");
        if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
            let err = RequestFile::from_file(&fifo).expect_err("a FIFO");
            assert!(err.to_string().contains("FIFO"), "{err}");
        }
    }
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"cases": [{"name": "q"}]}"#).expect("write");
    let err = RequestFile::from_file(&bad).expect_err("no input");
    assert!(matches!(&err, BatchError::RequestFile { path, .. } if *path == bad), "{err}");
    assert!(err.to_string().contains("request `q`: needs `input_ids` or `prompt`"), "{err}");
}
