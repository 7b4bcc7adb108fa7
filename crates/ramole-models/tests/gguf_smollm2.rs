//! The real SmolLM2-135M-Instruct GGUF (fetched through the asset cache on first use).

use ramole_assets::AssetCache;
use ramole_models::gguf::{GgmlType, GgufFile, GgufWeights, hf_name};
use ramole_models::weights::WeightSource;

fn smollm2() -> GgufWeights {
    let cache = AssetCache::from_env().expect("asset cache").quiet(true);
    let path = cache.smollm2_gguf().expect("SmolLM2 GGUF");
    GgufWeights::new(GgufFile::open(path).expect("parse GGUF"))
}

#[test]
fn smollm2_config_and_all_272_tensors_load_with_the_right_shapes() {
    let w = smollm2();
    let f = w.file();
    assert_eq!(f.version(), 3);
    let c = w.llama_config().expect("llama config");
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads),
        (30, 576, 1536, 9, 3)
    );
    assert_eq!((c.head_dim, c.vocab_size, c.max_position_embeddings), (64, 49152, 8192));
    assert_eq!((c.rope_theta, c.rms_norm_eps), (100000.0, 1e-5));
    assert!(c.tie_word_embeddings);
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(1), &[2][..]));

    assert_eq!(f.tensors().len(), 272);
    let count = |t: GgmlType| f.tensors().iter().filter(|i| i.dtype == t).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::F32), count(GgmlType::Q8_0)), (210, 61, 1));

    let (d, ffn, kv) = (c.hidden_size, c.intermediate_size, c.num_key_value_heads * c.head_dim);
    let mut expected = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, d])];
    expected.push(("model.norm.weight".into(), vec![d]));
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", vec![d, d]),
            ("self_attn.k_proj", vec![kv, d]),
            ("self_attn.v_proj", vec![kv, d]),
            ("self_attn.o_proj", vec![d, d]),
            ("mlp.gate_proj", vec![ffn, d]),
            ("mlp.up_proj", vec![ffn, d]),
            ("mlp.down_proj", vec![d, ffn]),
            ("input_layernorm", vec![d]),
            ("post_attention_layernorm", vec![d]),
        ] {
            expected.push((format!("{p}.{name}.weight"), shape));
        }
    }
    assert_eq!(expected.len(), 272);
    let mut names = w.names();
    names.sort();
    let mut want: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(names, want, "every GGUF tensor maps to an HF name");
    for (name, shape) in &expected {
        let t = w.load(name, shape).unwrap_or_else(|e| panic!("{name}: {e}"));
        let max = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.0 && max < 1e3, "{name}: max |w| = {max}");
    }
    assert!(f.tensors().iter().all(|t| hf_name(&t.name).is_some()));
}

/// Values dequantised (and q/k rows un-permuted) by the PyPI `gguf` package
/// (tests/data/fixtures/make_gguf_slices.py): Q8_0, Q4_1 and F32 tensors must agree to f32 rounding.
#[test]
fn smollm2_dequantised_values_match_the_python_gguf_package() {
    let w = smollm2();
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/smollm2/gguf_slices.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("slices")).expect("json");
    let refs = json.as_object().expect("object");
    assert_eq!(refs.len(), 5);
    for (name, r) in refs {
        let shape: Vec<usize> =
            r["shape"].as_array().expect("shape").iter().map(|v| v.as_u64().expect("dim") as usize).collect();
        let t = w.load(name, &shape).expect("tensor");
        let idx = r["index"].as_array().expect("index");
        let vals = r["value"].as_array().expect("value");
        for (i, v) in idx.iter().zip(vals) {
            let (i, v) = (i.as_u64().expect("i") as usize, v.as_f64().expect("v") as f32);
            assert!((t.data[i] - v).abs() <= 1e-6 * v.abs().max(1.0), "{name}[{i}]: {} vs {v}", t.data[i]);
        }
        let cols: usize = shape[1..].iter().product();
        for (row, want) in
            r["first_rows"].as_array().expect("rows").iter().enumerate().take(if cols > 1 { 4 } else { 0 })
        {
            for (c, v) in want.as_array().expect("row").iter().enumerate() {
                let got = t.data[row * cols + c];
                assert!((got - v.as_f64().expect("v") as f32).abs() < 1e-6, "{name}[{row}, {c}]: {got} vs {v}");
            }
        }
        let abs_sum: f64 = t.data.iter().map(|v| f64::from(v.abs())).sum();
        let want = r["abs_sum"].as_f64().expect("abs_sum");
        assert!((abs_sum - want).abs() <= 1e-6 * want, "{name}: sum |w| {abs_sum} vs {want}");
    }
}
