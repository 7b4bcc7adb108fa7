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
    assert!(matches!(err, BatchError::Model { .. }), "{err}");
}
