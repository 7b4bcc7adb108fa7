//! The decoder with attention on the host kernel (`ramole_core::attention`, taken on the candle CPU
//! backend) against the same decoder on burn's ops (taken under autodiff): a left-padded batch whose
//! prompt is prefilled in two chunks into one cache, then decoding steps. Both load the same tiny Llama.
//! Then blocks on host values and blocks on tensors within one forward (the hand-off both ways).

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ramole_core::backend::{Selected, SelectedAutodiff, device, runs_on_host};
use ramole_core::lora::{ArrowParams, Composition, LoraFactors, LoraStack, MixPlan, RowLayout, RowMix};
use ramole_models::CausalLm;
use ramole_models::llama::{AttentionInput, KvCache, LinearKind, LlamaConfig, LlamaLora};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama/base")
}

/// Hidden states of every forward call: a prompt of 9 tokens per row (row 1 left-padded by 4) fed as
/// 5 + 4 positions, then three decoding steps.
fn hidden_states<B: Backend>(device: &B::Device) -> Vec<Vec<f32>> {
    hidden_states_with::<B>(device, |_| None)
}

/// [`hidden_states`] with the LoRA that `lora` builds for the model's config.
fn hidden_states_with<B: Backend>(
    device: &B::Device,
    lora: impl Fn(&LlamaConfig) -> Option<LlamaLora<B>>,
) -> Vec<Vec<f32>> {
    let lm = CausalLm::<B>::load(tiny(), device).expect("tiny llama");
    let lora = lora(&lm.config);
    let lora = lora.as_ref();
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
        out.push(model.forward(tokens, &attn, &mut cache, lora).into_data().convert::<f32>().to_vec().expect("f32"));
        past += len;
    }
    for step in 0..3i64 {
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![10 + step, 20 + step], [2, 1]), device);
        let attn = AttentionInput::left_padded(&pads, past, 1, device);
        out.push(model.forward(tokens, &attn, &mut cache, lora).into_data().convert::<f32>().to_vec().expect("f32"));
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

/// Two adapters of rank 2 on every linear layer of every block (small pseudo-random values), a mixture
/// row and an Arrow row, each block's update in `layouts[block]`.
fn lora<B: Backend>(config: &LlamaConfig, layouts: &[RowLayout], device: &B::Device) -> LlamaLora<B> {
    let plan = MixPlan::new(
        vec![
            RowMix { composition: Composition::Mixture, entries: vec![(0, 0.6), (1, 0.4)] },
            RowMix {
                composition: Composition::Arrow(ArrowParams { top_k: 1, temperature: 1.0 }),
                entries: vec![(0, 1.0), (1, 1.0)],
            },
        ],
        2,
    )
    .expect("plan");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    };
    let mut lora = LlamaLora::none(config.num_hidden_layers);
    for (block, slots) in lora.layers.iter_mut().enumerate() {
        for kind in LinearKind::ALL {
            let [d_out, d_in] = config.linear_shape(kind);
            let adapters: Vec<LoraFactors> = (0..2)
                .map(|_| {
                    LoraFactors { a: values(2 * d_in), b: values(d_out * 2), rank: 2, scale: 2.0, proto: None }
                        .with_prototype()
                })
                .collect();
            let refs: Vec<Option<&LoraFactors>> = adapters.iter().map(Some).collect();
            let stack = LoraStack::<B>::new(&refs, d_in, d_out, device).expect("stack").expect("targets");
            slots[kind.slot()] = Some(stack.rows_in(&plan, layouts[block], None).expect("rows"));
        }
    }
    lora
}

/// Blocks on host values next to blocks on tensors in one forward pass, both ways round (host values
/// made a tensor for the next block, and back), equal the decoder on burn's ops with the same
/// adapters: on the CPU backend a block runs on the host where its LoRA updates do
/// (`RowLayout::Host`), and on tensors where they are gathered on the device.
#[test]
fn host_and_tensor_blocks_hand_over_within_one_forward() {
    let dev = device();
    let adev = device();
    let n = CausalLm::<Selected>::load(tiny(), &dev).expect("tiny llama").config.num_hidden_layers;
    assert!(n >= 2, "two blocks at least");
    let all = |layout| vec![layout; n];
    let burn = hidden_states_with::<SelectedAutodiff>(&adev, |c| Some(lora(c, &all(RowLayout::Gathered), &adev)));
    let alternating = |first: RowLayout, other: RowLayout| -> Vec<RowLayout> {
        (0..n).map(|i| if i % 2 == 0 { first } else { other }).collect()
    };
    let mixes = [
        alternating(RowLayout::Host, RowLayout::Gathered),
        alternating(RowLayout::Gathered, RowLayout::Host),
        all(RowLayout::Host),
    ];
    for layouts in mixes {
        let got = hidden_states_with::<Selected>(&dev, |c| Some(lora(c, &layouts, &dev)));
        assert_eq!(got.len(), burn.len());
        for (call, (a, b)) in got.iter().zip(&burn).enumerate() {
            let max = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(max < 1e-4, "{layouts:?}, forward call {call}: differs from burn's ops by {max}");
        }
    }
}
