//! Regression tests for model files that are not what they claim to be: a FIFO or a link to
//! `/dev/zero` in place of a weights, config or tokenizer file (refused before it is opened, so
//! nothing blocks or grows), a huge declared header, truncated data, and absurd dimensions. Each ends
//! in one typed error naming the file.

mod common;

use std::path::{Path, PathBuf};

use ramole_models::ModelError;
use ramole_models::bert::BertConfig;
use ramole_models::gguf::{GgmlType, GgufFile, GgufValue, GgufWeights, MAX_ARRAY_ELEMENTS};
use ramole_models::llama::LlamaConfig;
use ramole_models::weights::{SafetensorsWeights, WeightSource};

/// A loader of one kind of model file.
type Loader = fn(&Path) -> Result<(), ModelError>;

/// Every loader of a model file, by the file name it is usually given.
fn loaders() -> Vec<(&'static str, Loader)> {
    vec![
        ("model.safetensors", |p| SafetensorsWeights::open(p).map(drop)),
        ("model.gguf", |p| GgufFile::open(p).map(drop)),
        ("config.json", |p| LlamaConfig::from_hf_file(p).map(drop)),
        ("bert_config.json", |p| BertConfig::from_file(p).map(drop)),
        ("tokenizer.json", |p| ramole_models::tokenizer::load_tokenizer_json(p).map(drop)),
    ]
}

fn assert_io_names(err: &ModelError, path: &Path, needle: &str) {
    match err {
        ModelError::Io { path: p, source } => {
            assert_eq!(p, path);
            assert!(source.to_string().contains(needle), "`{source}` lacks `{needle}`");
        }
        other => panic!("expected an Io error for {}, got {other:?}", path.display()),
    }
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_any_model_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, load) in loaders() {
        let fifo = dir.path().join(name);
        if !common::mkfifo(&fifo) {
            eprintln!("mkfifo unavailable: skipped");
            return;
        }
        let p = fifo.clone();
        let err = common::within(20, name, move || load(&p)).expect_err("a FIFO is not a model file");
        assert_io_names(&err, &fifo, "FIFO");
    }
}

#[cfg(unix)]
#[test]
fn a_link_to_dev_zero_in_place_of_any_model_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, load) in loaders() {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let p = link.clone();
        let err = common::within(20, name, move || load(&p)).expect_err("a device is not a model file");
        assert_io_names(&err, &link, "character device");
    }
}

#[test]
fn a_folder_in_place_of_a_model_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, load) in loaders() {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).expect("mkdir");
        assert_io_names(&load(&sub).expect_err("a folder"), &sub, "a folder");
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn assert_format(result: Result<SafetensorsWeights, ModelError>, path: &Path, needle: &str) {
    match result {
        Err(ModelError::Format { path: p, message }) => {
            assert_eq!(p, path);
            assert!(message.contains(needle), "`{message}` lacks `{needle}`");
        }
        other => panic!("expected a Format error containing `{needle}`, got {other:?}"),
    }
}

#[test]
fn safetensors_huge_declared_header_is_refused_before_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = common::small_safetensors();
    for (n, needle) in [
        (u64::MAX, "over the"),
        (100_000_001, "over the"),
        (good.len() as u64, "runs past the end"),
        (50_000_000, "runs past the end"),
    ] {
        let mut v = good.clone();
        v[..8].copy_from_slice(&n.to_le_bytes());
        let p = write(dir.path(), &format!("h{n}.safetensors"), &v);
        assert_format(SafetensorsWeights::open(&p), &p, needle);
        assert_format(SafetensorsWeights::from_bytes(p.clone(), v), &p, needle);
    }
    for short in [&b""[..], &b"\x02\0\0"[..]] {
        let p = write(dir.path(), "short.safetensors", short);
        assert_format(SafetensorsWeights::open(&p), &p, "shorter than the 8-byte header length");
    }
}

#[test]
fn safetensors_truncated_or_padded_data_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = common::small_safetensors();
    SafetensorsWeights::from_bytes("good".into(), good.clone()).expect("the reference file opens");
    let n = u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    // Every cut inside the data, and inside the header.
    for cut in (8 + n..good.len()).chain([9, 8 + n / 2]) {
        let p = write(dir.path(), &format!("cut{cut}.safetensors"), &good[..cut]);
        assert!(
            matches!(SafetensorsWeights::open(&p), Err(ModelError::Format { path, .. }) if path == p),
            "cut at {cut}"
        );
    }
    let p = write(dir.path(), "padded.safetensors", &[&good[..], &[0u8; 4]].concat());
    assert_format(SafetensorsWeights::open(&p), &p, "truncated or padded");
}

/// A safetensors file with a hand-written header (padded with spaces) and `data` after it.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    [&(h.len() as u64).to_le_bytes()[..], &h, data].concat()
}

#[test]
fn safetensors_absurd_dims_and_offsets_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        // The element count overflows.
        (r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#, "overflows"),
        // The shape needs far more bytes than the range holds.
        (r#"{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,16]}}"#, "needs"),
        // More dimensions than any tensor has.
        (r#"{"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1,1,4],"data_offsets":[0,16]}}"#, "more than 8 dimensions"),
        // The range ends before it starts, or past the data.
        (r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#, "data_offsets"),
        (
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"v":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
            "expected 16",
        ),
        // Ranges near the top of u64 (a careless `end + header length` check would overflow).
        (
            r#"{"a":{"dtype":"U8","shape":[2305843009213693951],"data_offsets":[0,2305843009213693951]},
               "b":{"dtype":"F32","shape":[4035225266123964416],"data_offsets":[2305843009213693951,18446744073709551615]}}"#,
            "overflows",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[2305843009213693951],"data_offsets":[0,2305843009213693951]},
               "b":{"dtype":"U8","shape":[2305843009213693951],"data_offsets":[2305843009213693951,4611686018427387902]}}"#,
            "truncated or padded",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[0],"data_offsets":[16,16]}}"#,
            "twice",
        ),
        (r#"[1, 2]"#, "header"),
        (r#"{"w":{"dtype":"Q9","shape":[4],"data_offsets":[0,16]}}"#, "header"),
        (r#"{"__metadata__":{"format":{"nested":1}}}"#, "header"),
    ];
    for (i, (header, needle)) in cases.into_iter().enumerate() {
        let p = write(dir.path(), &format!("dims{i}.safetensors"), &raw_safetensors(header, &[0u8; 16]));
        assert_format(SafetensorsWeights::open(&p), &p, needle);
    }
    // A zero dimension next to a huge one holds no data: it loads, and transposing it is instant.
    let header =
        r#"{"__metadata__":{"format":"pt"},"z":{"dtype":"F32","shape":[4611686018427387904,0],"data_offsets":[0,0]}}"#;
    let p = write(dir.path(), "zero.safetensors", &raw_safetensors(header, &[]));
    let w = SafetensorsWeights::open(&p).expect("an empty tensor is valid");
    let t = w.get("z").expect("get").expect("present");
    assert!(t.data.is_empty());
    assert_eq!(common::within(20, "transposing an empty tensor", move || t.transposed()).shape, vec![0, 1 << 62]);
}

#[test]
fn gguf_absurd_dims_are_refused_or_cost_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = [("llama.attention.head_count", GgufValue::U32(1))];
    let huge = common::RawTensor {
        name: "blk.0.attn_q.weight".into(),
        shape: vec![1 << 40, 1 << 40],
        dtype: GgmlType::F32,
        data: vec![0; 16],
    };
    let p = write(dir.path(), "huge.gguf", &common::gguf_bytes(&meta, &[huge]));
    let err = GgufFile::open(&p).expect_err("dims beyond the file");
    assert!(
        matches!(&err, ModelError::Format { path, message } if path == &p && message.contains("blk.0.attn_q.weight")),
        "{err}"
    );

    // [huge, 0] holds nothing: it parses, and un-permuting or transposing it does not loop over `huge`.
    let empty = common::RawTensor {
        name: "blk.0.attn_q.weight".into(),
        shape: vec![1 << 62, 0],
        dtype: GgmlType::F32,
        data: vec![],
    };
    let p = write(dir.path(), "empty.gguf", &common::gguf_bytes(&meta, &[empty]));
    let w = GgufWeights::open(&p).expect("an empty tensor is valid");
    let t = common::within(20, "loading an empty q weight", move || w.get("model.layers.0.self_attn.q_proj.weight"));
    let t = t.expect("get").expect("present");
    assert_eq!((t.shape.clone(), t.data.len()), (vec![1 << 62, 0], 0));
    common::within(20, "transposing it", move || t.transposed());
}

#[test]
fn gguf_metadata_caps_hold_before_allocation() {
    // Two byte arrays whose lengths fit the file but together pass the element cap.
    let half = MAX_ARRAY_ELEMENTS / 2 + 1;
    let mut bytes = common::gguf_bytes(&[], &[]);
    bytes.truncate(24); // the header alone, without the alignment padding
    bytes[16..24].copy_from_slice(&2u64.to_le_bytes());
    for key in ["a", "b"] {
        bytes.extend((key.len() as u64).to_le_bytes());
        bytes.extend(key.as_bytes());
        bytes.extend(9u32.to_le_bytes()); // array
        bytes.extend(0u32.to_le_bytes()); // of uint8
        bytes.extend(half.to_le_bytes());
        bytes.resize(bytes.len() + half as usize, 7);
    }
    let err = GgufFile::from_bytes("caps.gguf", &bytes).expect_err("too many elements");
    assert!(matches!(&err, ModelError::Format { message, .. } if message.contains("elements in all")), "{err}");

    // A string longer than the cap, and counts past theirs, are refused from the header alone.
    let mut v = common::gguf_bytes(&[("k", common::s("v"))], &[]);
    v[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = GgufFile::from_bytes("strlen.gguf", &v).expect_err("string length");
    assert!(matches!(&err, ModelError::Format { message, .. } if message.contains("over the limit")), "{err}");
}

#[cfg(unix)]
#[test]
fn gguf_replaced_by_a_fifo_after_parsing_is_refused_when_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "m.gguf", &common::tiny_llama_gguf());
    let w = GgufWeights::open(&p).expect("open");
    std::fs::remove_file(&p).expect("rm");
    if !common::mkfifo(&p) {
        return;
    }
    let err = common::within(20, "reading a tensor", move || w.get("model.embed_tokens.weight"))
        .expect_err("the file is now a FIFO");
    assert_io_names(&err, &p, "FIFO");
}

#[test]
fn config_json_absurd_sizes_are_config_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = serde_json::json!({
        "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
    });
    let p = write(dir.path(), "config.json", base.to_string().as_bytes());
    LlamaConfig::from_hf_file(&p).expect("the reference config loads");
    for (key, value, needle) in [
        ("hidden_size", serde_json::json!(1u64 << 40), "over the limit"),
        ("num_hidden_layers", serde_json::json!(1_000_000), "over the limit"),
        ("vocab_size", serde_json::json!(u64::MAX), "over the limit"),
        ("head_dim", serde_json::json!(1u64 << 62), "over the limit"),
        ("eos_token_id", serde_json::json!(1u64 << 33), "not a valid token id"),
        ("bos_token_id", serde_json::json!(-1), "not a non-negative integer"),
        ("vocab_size", serde_json::json!(-5), "vocab_size"),
    ] {
        let mut c = base.clone();
        c[key] = value;
        let p = write(dir.path(), "config.json", c.to_string().as_bytes());
        let err = LlamaConfig::from_hf_file(&p).expect_err(key);
        assert!(
            matches!(&err, ModelError::Config { path, message } if path == &p && message.contains(needle)),
            "{key}: {err}"
        );
    }
    let rope_inf = base.to_string().replace('}', r#","rope_theta": 1e400}"#);
    let p = write(dir.path(), "config.json", rope_inf.as_bytes());
    assert!(matches!(LlamaConfig::from_hf_file(&p), Err(ModelError::Config { .. })));
    let p = write(dir.path(), "config.json", b"[]");
    assert!(
        matches!(LlamaConfig::from_hf_file(&p), Err(ModelError::Config { message, .. }) if message.contains("object"))
    );

    let bert = serde_json::json!({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 1u64 << 40});
    let p = write(dir.path(), "bert.json", bert.to_string().as_bytes());
    let err = BertConfig::from_file(&p).expect_err("absurd positions");
    assert!(matches!(&err, ModelError::Config { message, .. } if message.contains("max_position_embeddings")), "{err}");
}

#[test]
fn fixture_safetensors_files_read_as_the_safetensors_crate_reads_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures");
    let files = [
        "tiny-llama/base/model.safetensors",
        "tiny-llama/adapters/a0/adapter_model.safetensors",
        "tiny-llama/reference.safetensors",
        "minilm/reference.safetensors",
        "smollm2/reference.safetensors",
    ];
    for file in files {
        let path = root.join(file);
        let bytes = std::fs::read(&path).expect("fixture");
        let reference = safetensors::SafeTensors::deserialize(&bytes).expect("the safetensors crate reads it");
        let ours = SafetensorsWeights::open(&path).expect("open");
        let mut names = ours.names();
        names.sort();
        let mut want: Vec<String> = reference.names().into_iter().map(String::from).collect();
        want.sort();
        assert_eq!(names, want, "{file}");
        for name in names {
            let view = reference.tensor(&name).expect("tensor");
            assert_eq!(ours.shape(&name), Some(view.shape()), "{file}: {name}");
            if view.dtype() == safetensors::Dtype::F32 {
                let want: Vec<f32> =
                    view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                let t = ours.get(&name).expect("get").expect("present");
                assert_eq!((t.shape, t.data), (view.shape().to_vec(), want), "{file}: {name}");
            }
        }
    }
}
