//! The decoder with attention on the host kernel (`ramole_core::attention`, taken on the candle CPU
//! backend) against the same decoder on burn's ops (taken under autodiff): a left-padded batch whose
//! prompt is prefilled in two chunks into one cache, then decoding steps. Both load the same tiny Llama.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ramole_core::backend::{Selected, SelectedAutodiff, device, runs_on_host};
use ramole_models::CausalLm;
use ramole_models::llama::{AttentionInput, KvCache};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama/base")
}

/// Hidden states of every forward call: a prompt of 9 tokens per row (row 1 left-padded by 4) fed as
/// 5 + 4 positions, then three decoding steps.
fn hidden_states<B: Backend>(device: &B::Device) -> Vec<Vec<f32>> {
    let lm = CausalLm::<B>::load(tiny(), device).expect("tiny llama");
    let model = lm.model;
    let pads = [0usize, 4];
    let ids: [[i64; 9]; 2] = [[5, 17, 42, 8, 99, 3, 250, 61, 7], [0, 0, 0, 0, 12, 77, 300, 4, 19]];
    let mut cache = KvCache::<B>::with_capacity(model.n_layers(), 16);
    let mut out = Vec::new();
    let mut past = 0;
    for (start, len) in [(0, 5), (5, 4)] {
        let chunk: Vec<i64> = ids.iter().flat_map(|r| r[start..start + len].iter().copied()).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(chunk, [2, len]), device);
        let attn = AttentionInput::left_padded(&pads, past, len, device);
        out.push(model.forward(tokens, &attn, &mut cache, None).into_data().convert::<f32>().to_vec().expect("f32"));
        past += len;
    }
    for step in 0..3i64 {
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![10 + step, 20 + step], [2, 1]), device);
        let attn = AttentionInput::left_padded(&pads, past, 1, device);
        out.push(model.forward(tokens, &attn, &mut cache, None).into_data().convert::<f32>().to_vec().expect("f32"));
        past += 1;
    }
    out
}

#[test]
fn host_attention_equals_burns_attention() {
    let dev = device();
    let host = hidden_states::<Selected>(&dev);
    let burn = hidden_states::<SelectedAutodiff>(&dev);
    assert!(!runs_on_host::<SelectedAutodiff>(), "autodiff takes burn's ops");
    assert_eq!(host.len(), burn.len());
    for (call, (a, b)) in host.iter().zip(&burn).enumerate() {
        assert_eq!(a.len(), b.len());
        let max = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max < 1e-4, "forward call {call}: host and burn attention differ by {max}");
    }
}
