//! Helpers shared by the integration tests on untrusted files: GGUF files (through the crate's writer), small valid
//! safetensors files, and a guard that turns a hang into a test failure.

#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

use ramole_models::gguf::{GgmlType, GgufValue};

/// Runs `f` on another thread and fails the test if it takes longer than `secs` (a read that blocks
/// on a FIFO would otherwise hang the test run). The blocked thread is left behind; the test fails.
pub fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not return within {secs} s (it blocks or loops on untrusted input)"),
    }
}

/// Makes a FIFO at `path` with `mkfifo`; false if the tool is unavailable (the test is then skipped).
pub fn mkfifo(path: &std::path::Path) -> bool {
    std::process::Command::new("mkfifo").arg(path).status().is_ok_and(|s| s.success())
}

pub use ramole_models::gguf::writer::{RawTensor, f32_tensor};

/// The bytes of a GGUF v3 file with `metadata` and `tensors`, data aligned to 32 bytes.
pub fn gguf_bytes(metadata: &[(&str, GgufValue)], tensors: &[RawTensor]) -> Vec<u8> {
    ramole_models::gguf::writer::gguf_bytes(metadata, tensors, 32)
}

pub fn s(v: &str) -> GgufValue {
    GgufValue::String(v.into())
}

/// A tiny Llama GGUF with a tokenizer (2 query heads, 1 KV head, head_dim 4, hidden 8, vocab 10) and
/// tensors of several types.
pub fn tiny_llama_gguf() -> Vec<u8> {
    let tokens = ["<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "Ċ"];
    let meta = vec![
        ("general.architecture", s("llama")),
        ("llama.embedding_length", GgufValue::U32(8)),
        ("llama.feed_forward_length", GgufValue::U32(16)),
        ("llama.block_count", GgufValue::U32(1)),
        ("llama.attention.head_count", GgufValue::U32(2)),
        ("llama.attention.head_count_kv", GgufValue::U32(1)),
        ("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5)),
        ("llama.context_length", GgufValue::U32(128)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        ("tokenizer.ggml.tokens", GgufValue::Array(tokens.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.merges", GgufValue::Array(vec![s("a b"), s("Ġ ab")])),
        ("tokenizer.ggml.token_type", GgufValue::Array([3, 3, 1, 1, 1, 1, 1, 1, 1, 1].map(GgufValue::I32).to_vec())),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(0)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(1)),
    ];
    let mut q8 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
    q8.extend((-16i8..16).map(|q| q as u8));
    let mut q4 = half::f16::from_f32(2.0).to_le_bytes().to_vec();
    q4.extend((0u8..16).map(|j| (15 - j) << 4 | j));
    let tensors = vec![
        f32_tensor("token_embd.weight", &[10, 8], &[0.5; 80]),
        f32_tensor("blk.0.attn_q.weight", &[8, 8], &(0..64).map(|v| v as f32).collect::<Vec<_>>()),
        f32_tensor("blk.0.attn_k.weight", &[4, 8], &(0..32).map(|v| v as f32).collect::<Vec<_>>()),
        RawTensor { name: "blk.0.ffn_up.weight".into(), shape: vec![1, 32], dtype: GgmlType::Q8_0, data: q8 },
        RawTensor { name: "blk.0.ffn_down.weight".into(), shape: vec![1, 32], dtype: GgmlType::Q4_0, data: q4 },
        f32_tensor("output_norm.weight", &[8], &[1.0; 8]),
    ];
    gguf_bytes(&meta, &tensors)
}

/// The bytes of a safetensors file holding `tensors` (name, dtype, shape, raw data).
pub fn safetensors_bytes(tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// A small valid safetensors file with f32, f16 and bf16 tensors.
pub fn small_safetensors() -> Vec<u8> {
    let f32s: Vec<u8> = [1.5f32, -2.0, 0.25, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let bf16s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    safetensors_bytes(&[
        ("a", safetensors::Dtype::F32, vec![2, 2], f32s),
        ("b", safetensors::Dtype::F16, vec![1, 2], f16s),
        ("c", safetensors::Dtype::BF16, vec![2], bf16s),
    ])
}
