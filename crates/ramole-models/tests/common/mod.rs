//! Helpers shared by the integration tests on untrusted files: a minimal GGUF v3 writer, small valid
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

/// One tensor to write: name, PyTorch-order shape, type, raw data.
pub struct RawTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: GgmlType,
    pub data: Vec<u8>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => string(out, s),
        GgufValue::Array(a) => {
            out.extend(a.first().map_or(4, type_id).to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            a.iter().for_each(|e| value(out, e));
        }
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// The bytes of a GGUF v3 file with `metadata` and `tensors`, data aligned to 32 bytes.
pub fn gguf_bytes(metadata: &[(&str, GgufValue)], tensors: &[RawTensor]) -> Vec<u8> {
    let alignment = 32u64;
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        string(&mut out, k);
        out.extend(type_id(v).to_le_bytes());
        value(&mut out, v);
    }
    let align = |n: u64| n.div_ceil(alignment) * alignment;
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        string(&mut out, &t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        t.shape.iter().rev().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(t.dtype.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = align(offset + t.data.len() as u64);
    }
    let data_start = align(out.len() as u64);
    out.resize(data_start as usize, 0);
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize((data_start + off) as usize, 0);
        out.extend(&t.data);
    }
    out
}

/// An F32 tensor.
pub fn f32_tensor(name: &str, shape: &[u64], values: &[f32]) -> RawTensor {
    RawTensor {
        name: name.into(),
        shape: shape.to_vec(),
        dtype: GgmlType::F32,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
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
