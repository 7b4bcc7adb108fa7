//! Model variants the fixture does not cover directly: tied embeddings, the older `config.json` layout,
//! f16/bf16 weights. Each is checked against an equivalent model the fixture does cover.

mod common;

use std::path::{Path, PathBuf};

use ramole_batch::{Engine, RequestFile, RunOptions};
use ramole_core::backend::{Selected, device};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

fn fixture() -> PathBuf {
    common::fixture("tiny-llama")
}

/// Writes a copy of the tiny base model to `dir`, with tensors mapped by `edit` (None drops one) and
/// stored as `dtype`, and the config edited by `config`.
fn variant(
    dir: &Path,
    dtype: Dtype,
    edit: impl Fn(&str, Vec<f32>, &SafeTensors<'_>) -> Option<Vec<f32>>,
    config: impl Fn(&mut serde_json::Value),
) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let bytes = std::fs::read(fixture().join("base/model.safetensors")).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid");
    let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (key, view) in st.tensors() {
        let values: Vec<f32> = common::f32s(&view);
        let Some(values) = edit(&key, values, &st) else { continue };
        let raw: Vec<u8> = match dtype {
            Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            Dtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        out.push((key, view.shape().to_vec(), raw));
    }
    let views: Vec<(String, TensorView<'_>)> =
        out.iter().map(|(k, s, b)| (k.clone(), TensorView::new(dtype, s.clone(), b).expect("view"))).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).expect("write");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("base/config.json")).expect("cfg")).expect("json");
    config(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("write cfg");
    dir.to_path_buf()
}

fn f32s(st: &SafeTensors<'_>, key: &str) -> Vec<f32> {
    common::f32s(&st.tensor(key).expect("tensor"))
}

fn logits(model: &Path) -> Vec<Vec<f32>> {
    let mut engine = Engine::<Selected>::load(model, &device()).expect("loads");
    engine.adapters_mut().load_dir(fixture().join("adapters")).expect("adapters");
    let file = RequestFile::from_file(fixture().join("cases.json")).expect("cases");
    engine
        .run(&file.requests, RunOptions { prompt_logits: true, ..Default::default() })
        .into_iter()
        .map(|r| r.expect("runs").prompt_logits.expect("logits"))
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tied_embeddings_equal_an_untied_head_holding_the_embedding() {
    let dir = tempfile::tempdir().expect("tmp");
    // Untied, with lm_head := embed_tokens.
    let untied = variant(
        &dir.path().join("untied"),
        Dtype::F32,
        |k, v, st| Some(if k == "lm_head.weight" { f32s(st, "model.embed_tokens.weight") } else { v }),
        |_| {},
    );
    // Tied: no lm_head tensor, `tie_word_embeddings: true`, and the older config layout
    // (top-level rope_theta, torch_dtype).
    let tied = variant(
        &dir.path().join("tied"),
        Dtype::F32,
        |k, v, _| (k != "lm_head.weight").then_some(v),
        |c| {
            c["tie_word_embeddings"] = true.into();
            let theta = c["rope_parameters"]["rope_theta"].clone();
            c.as_object_mut().expect("object").remove("rope_parameters");
            c["rope_theta"] = theta;
            c["torch_dtype"] = "float32".into();
        },
    );
    let (a, b) = (logits(&untied), logits(&tied));
    assert!(max_diff(&a, &b) < 1e-5, "tied vs untied: {}", max_diff(&a, &b));
}

#[test]
fn half_precision_weights_load_like_their_f32_rounding() {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, dtype, round) in [
        ("f16", Dtype::F16, (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32),
        ("bf16", Dtype::BF16, |v: f32| half::bf16::from_f32(v).to_f32()),
    ] {
        let half = variant(&dir.path().join(name), dtype, |_, v, _| Some(v), |c| c["dtype"] = name.into());
        let rounded = variant(
            &dir.path().join(format!("{name}-as-f32")),
            Dtype::F32,
            |_, v, _| Some(v.into_iter().map(round).collect()),
            |_| {},
        );
        let (a, b) = (logits(&half), logits(&rounded));
        assert!(max_diff(&a, &b) < 1e-5, "{name}: {}", max_diff(&a, &b));
    }
}
