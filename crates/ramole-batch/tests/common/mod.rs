//! Helpers shared by the integration tests: the fixture folders and reading reference tensors.
#![allow(dead_code)] // each test binary uses a part

use std::path::PathBuf;

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
