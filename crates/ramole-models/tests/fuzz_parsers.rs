//! Time-bounded fuzzing of the parsers of untrusted model files (`$RAMOLE_FUZZ_SECS` per target):
//! the GGUF header (and what is built from it: tensor data, Llama config, tokenizer), the safetensors
//! header (and every tensor), and an HF `config.json`. A panic fails the test; errors are expected.

mod common;

use ramole_models::gguf::{self, GgufFile, GgufValue, GgufWeights};
use ramole_models::llama::LlamaConfig;
use ramole_models::weights::{HostTensor, SafetensorsWeights, WeightSource};

#[test]
fn fuzz_gguf_header() {
    let seeds = vec![
        common::tiny_llama_gguf(),
        common::gguf_bytes(
            &[
                ("general.alignment", GgufValue::U32(32)),
                ("nested", GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1), GgufValue::U8(2)])])),
                ("f64", GgufValue::F64(0.5)),
                ("i64", GgufValue::I64(-3)),
                ("bool", GgufValue::Bool(true)),
            ],
            &[common::f32_tensor("w", &[2, 3], &[1.0; 6])],
        ),
        common::gguf_bytes(&[("general.architecture", common::s("llama"))], &[]),
    ];
    ramole_testkit::fuzz("gguf header", &seeds, |bytes| {
        let Ok(file) = GgufFile::from_bytes("fuzz.gguf", bytes) else { return false };
        for t in file.tensors() {
            // The data as the loader would read it, from memory.
            let range = t.size.and_then(|size| {
                let start = usize::try_from(t.offset).ok()?;
                Some(start..start.checked_add(usize::try_from(size).ok()?)?)
            });
            if let Some(raw) = range.and_then(|r| bytes.get(r)) {
                assert!(t.size.is_some(), "a parsed tensor's data lies inside the file");
                if let Some(data) = gguf::dequantize(t.dtype, raw, t.numel())
                    && let Some(host) = HostTensor::new(t.shape.clone(), data)
                {
                    let _ = host.transposed();
                    for heads in 1..=4 {
                        let _ = gguf::unpermute_rows(&host, heads);
                    }
                }
            } else {
                assert!(t.size.is_none(), "tensor `{}`: a parsed data range lies outside the file", t.name);
            }
        }
        for key in file.metadata().keys() {
            let _ = (file.get_u32(key), file.get_f64(key), file.get_str(key), file.get_bool(key));
            let _ = (file.get_str_array(key), file.get_int_array(key), file.get_f32_array(key));
        }
        let weights = GgufWeights::new(file);
        let _ = weights.llama_config();
        let _ = weights.names();
        let _ = ramole_models::tokenizer::from_gguf(weights.file());
        true
    });
}

#[test]
fn fuzz_safetensors_header() {
    let seeds = vec![
        common::small_safetensors(),
        common::safetensors_bytes(&[]),
        common::safetensors_bytes(&[(
            "i",
            safetensors::Dtype::I32,
            vec![2],
            [1i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect(),
        )]),
    ];
    ramole_testkit::fuzz("safetensors header", &seeds, |bytes| {
        let Ok(w) = SafetensorsWeights::from_bytes("fuzz.safetensors".into(), bytes.to_vec()) else {
            return false;
        };
        for name in w.names() {
            let shape = w.shape(&name).map(<[usize]>::to_vec);
            match w.get(&name) {
                Ok(Some(t)) => {
                    assert_eq!(Some(t.shape.clone()), shape);
                    let _ = t.transposed();
                    let _ = w.load(&name, &t.shape);
                }
                Ok(None) => panic!("a listed tensor `{name}` is missing"),
                Err(_) => {}
            }
        }
        true
    });
}

#[test]
fn fuzz_llama_config_json() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama/base/config.json");
    let mut seeds = vec![
        br#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": [2, 0], "hidden_act": "silu",
            "rope_scaling": null}"#
            .to_vec(),
    ];
    if let Ok(bytes) = std::fs::read(&fixture) {
        seeds.push(bytes);
    }
    ramole_testkit::fuzz("llama config.json", &seeds, |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else { return false };
        match LlamaConfig::from_hf_str(text) {
            Ok(c) => {
                assert!(c.validate().is_ok());
                for kind in ramole_models::llama::LinearKind::ALL {
                    let _ = c.linear_shape(kind);
                }
                true
            }
            Err(_) => false,
        }
    });
}
