//! Helpers shared by the integration tests: the fixture folders and reading reference tensors.
#![allow(dead_code)] // each test binary uses a part

use std::path::PathBuf;

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

/// `tests/data/fixtures/<name>` of the repository.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures").join(name)
}

/// The values of an f32 tensor.
pub fn f32s(view: &TensorView<'_>) -> Vec<f32> {
    view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The values of an i64 tensor of token ids.
pub fn token_ids(view: &TensorView<'_>) -> Vec<u32> {
    view.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as u32)
        .collect()
}

/// A fixture's reference logits and greedy tokens, and its tolerance.
pub struct Reference {
    bytes: Vec<u8>,
    abs: f32,
    rel: f32,
}

impl Reference {
    /// Reads `reference.safetensors` and the tolerance in `cases.json` of a fixture folder.
    pub fn load(dir: &std::path::Path) -> Self {
        let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference");
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases")).expect("json");
        let tol = &cases["tolerance"];
        Self {
            bytes,
            abs: tol["logits_abs"].as_f64().expect("abs") as f32,
            rel: tol["logits_rel"].as_f64().expect("rel") as f32,
        }
    }

    /// Asserts that `out` (named like a fixture case) has its prompt logits within the tolerance and
    /// its greedy tokens.
    pub fn check(&self, out: &ramole_batch::RequestOutput) {
        let st = SafeTensors::deserialize(&self.bytes).expect("reference file");
        let logits = st.tensor(&format!("logits.{}", out.name)).expect("reference logits");
        let want = f32s(&logits);
        let got = out.prompt_logits.as_ref().expect("prompt logits");
        assert_eq!(got.len(), want.len(), "{}: logits size", out.name);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() - (self.abs + self.rel * w.abs()))
            .fold(f32::NEG_INFINITY, f32::max);
        assert!(worst <= 0.0, "{}: logits exceed tolerance by {worst}", out.name);
        let greedy = st.tensor(&format!("greedy.{}", out.name)).expect("reference greedy");
        let want = token_ids(&greedy);
        assert_eq!(out.new_tokens, want, "{}: greedy tokens", out.name);
    }
}
