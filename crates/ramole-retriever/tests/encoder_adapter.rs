//! Encoder adapters (a LoRA on the retriever's encoder) on the real all-MiniLM-L6-v2: saved whole,
//! loaded back, applied only to the base they were trained on, with an identity of their own that
//! does not depend on where the bytes came from, and embeddings equal to those of the same update
//! written out as a whole encoder. The shipped default adapter applies to the cached MiniLM.

mod common;

use common::minilm_dir;

use std::path::Path;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use ramole_core::backend::{Selected, device};
use ramole_models::bert::{BertLinear, BertLora};
use ramole_retriever::adapter::{ADAPTER_CONFIG, ADAPTER_META, ADAPTER_WEIGHTS};
use ramole_retriever::{DEFAULT_INSTRUCTION, EncoderAdapter, RetrieverError, SentenceEncoder, default_encoder};

type B = Selected;

fn base() -> SentenceEncoder<B> {
    SentenceEncoder::<B>::load(minilm_dir(), &device()).expect("load MiniLM")
}

/// A rank-2 LoRA on query, value and output.dense (PEFT's suffix rule: also attention.output.dense)
/// with small deterministic non-zero values in both factors.
fn lora(enc: &SentenceEncoder<B>) -> BertLora<B> {
    let targets = BertLinear::select(&["query", "value", "output.dense"]).expect("targets");
    assert_eq!(targets, [BertLinear::Query, BertLinear::Value, BertLinear::AttentionOutput, BertLinear::Output]);
    let mut k = 0u32;
    let mut next = move |_| {
        k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (f64::from(k >> 16) / 65_536.0 - 0.5) as f32 * 0.2
    };
    let mut l = BertLora::<B>::new(&enc.model().config, &targets, 2, 4.0 / 2.0, &mut next, &device());
    for p in &mut l.pairs {
        let [d_out, r] = p.lora_b.dims();
        let values: Vec<f32> = (0..d_out * r).map(&mut next).collect();
        p.lora_b = Param::from_tensor(Tensor::from_data(TensorData::new(values, [d_out, r]), &device()));
    }
    l
}

fn embed(enc: &SentenceEncoder<B>) -> Vec<Vec<f32>> {
    let texts: Vec<String> = ["What is 12 plus 30?", "Translate to pig latin: hello world", "Is this review positive?"]
        .iter()
        .map(|t| format!("{DEFAULT_INSTRUCTION}{t}"))
        .collect();
    enc.embed(&texts, 4).expect("embed")
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn save(dir: &Path, l: &BertLora<B>, base_identity: &str) -> Result<(), RetrieverError> {
    EncoderAdapter::save(dir, l, 4.0, base_identity, DEFAULT_INSTRUCTION, &[("notes.txt", b"x".to_vec())], false)
}

#[test]
fn adapter_round_trip_equals_the_merged_encoder_and_has_its_own_identity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let enc = base();
    let l = lora(&enc);
    let dir = tmp.path().join("adapter");
    save(&dir, &l, enc.identity()).expect("save");
    let mut files: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into())
        .collect();
    files.sort();
    assert_eq!(files, ["adapter"], "no staging folder is left");
    assert!(EncoderAdapter::is_adapter_dir(&dir));
    assert!(!EncoderAdapter::is_adapter_dir(&minilm_dir()));
    assert!(dir.join("notes.txt").is_file());

    let adapter = EncoderAdapter::load(&dir).expect("load adapter");
    assert_eq!(adapter.config().r, 2);
    assert_eq!(adapter.base_identity(), enc.identity());
    assert_eq!(adapter.instruction(), DEFAULT_INSTRUCTION);
    let adapted = base().with_adapter(&adapter).expect("apply");
    assert_ne!(adapted.identity(), enc.identity());
    assert!(!adapted.is_unsaved());
    // The same bytes from memory give the same identity and the same embeddings.
    let read = |f: &str| std::fs::read(dir.join(f)).expect("read");
    let again =
        EncoderAdapter::from_bytes("elsewhere", &read(ADAPTER_CONFIG), &read(ADAPTER_META), read(ADAPTER_WEIGHTS))
            .expect("from bytes");
    let adapted_again = base().with_adapter(&again).expect("apply again");
    assert_eq!(adapted_again.identity(), adapted.identity());
    let (plain, with) = (embed(&enc), embed(&adapted));
    assert_eq!(max_diff(&with, &embed(&adapted_again)), 0.0);
    assert!(max_diff(&plain, &with) > 1e-3, "the update changes the embeddings");

    // The adapter's update written out as a whole encoder embeds the same.
    let merged = enc.clone().with_model(l.merge(enc.model()).expect("merge"));
    let whole = tmp.path().join("whole");
    merged.save(&whole).expect("save whole");
    let loaded = SentenceEncoder::<B>::load(&whole, &device()).expect("load whole");
    assert!(max_diff(&with, &embed(&loaded)) < 1e-5);

    // Saving over it is refused without `overwrite`, and the folder is unchanged.
    let before = read(ADAPTER_WEIGHTS);
    assert!(save(&dir, &lora(&enc), enc.identity()).is_err());
    assert_eq!(read(ADAPTER_WEIGHTS), before);
}

#[test]
fn adapter_applies_only_to_its_base_and_bad_files_name_themselves() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let enc = base();
    let dir = tmp.path().join("adapter");
    save(&dir, &lora(&enc), "0123456789abcdef").expect("save");
    let adapter = EncoderAdapter::load(&dir).expect("load");
    match base().with_adapter(&adapter) {
        Err(RetrieverError::AdapterBase { expected, given, .. }) => {
            assert_eq!(expected, "0123456789abcdef");
            assert_eq!(given, enc.identity());
        }
        other => panic!("expected AdapterBase, got {other:?}"),
    }
    // An unsaved base cannot be recorded.
    let unsaved = enc.clone().with_model(enc.model().clone());
    assert!(save(&tmp.path().join("u"), &lora(&enc), unsaved.identity()).is_err());
    assert!(!tmp.path().join("u").exists());

    let good = tmp.path().join("good");
    save(&good, &lora(&enc), enc.identity()).expect("save");
    let read = |f: &str| std::fs::read(good.join(f)).expect("read");
    let cfg = String::from_utf8(read(ADAPTER_CONFIG)).expect("utf8");
    let bad_cfg = |from: &str, to: &str| cfg.replacen(from, to, 1).into_bytes();
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        ("peft_type", bad_cfg("\"LORA\"", "\"IA3\""), read(ADAPTER_META), ADAPTER_CONFIG),
        ("rank 0", bad_cfg("\"r\": 2", "\"r\": 0"), read(ADAPTER_META), ADAPTER_CONFIG),
        ("unknown target", bad_cfg("\"attention.self.query\"", "\"q_proj\""), read(ADAPTER_META), ADAPTER_CONFIG),
        ("dora", bad_cfg("\"use_dora\": false", "\"use_dora\": true"), read(ADAPTER_META), ADAPTER_CONFIG),
        ("not json", b"{".to_vec(), read(ADAPTER_META), ADAPTER_CONFIG),
        (
            "meta format",
            read(ADAPTER_CONFIG),
            b"{\"format\":\"x\",\"base_identity\":\"a\",\"instruction\":\"\"}".to_vec(),
            ADAPTER_META,
        ),
    ];
    for (what, config, meta, file) in cases {
        let err = EncoderAdapter::from_bytes(&good, &config, &meta, read(ADAPTER_WEIGHTS)).expect_err(what);
        assert!(err.to_string().contains(file), "{what}: {err}");
    }
    // Weights that do not fit the config (rank 3 declared, rank 2 stored), or are truncated: an error
    // naming the weights file when applied, never a panic.
    let rank3 =
        EncoderAdapter::from_bytes(&good, &bad_cfg("\"r\": 2", "\"r\": 3"), &read(ADAPTER_META), read(ADAPTER_WEIGHTS))
            .expect("config alone is fine");
    let err = base().with_adapter(&rank3).expect_err("rank mismatch");
    assert!(err.to_string().contains(ADAPTER_WEIGHTS), "{err}");
    let mut short = read(ADAPTER_WEIGHTS);
    short.truncate(short.len() / 2);
    let truncated =
        EncoderAdapter::from_bytes(&good, &read(ADAPTER_CONFIG), &read(ADAPTER_META), short).expect("parsed");
    let err = base().with_adapter(&truncated).expect_err("truncated");
    assert!(err.to_string().contains(ADAPTER_WEIGHTS), "{err}");
}

#[test]
fn the_shipped_default_adapter_applies_to_the_cached_minilm() {
    let adapter = default_encoder::adapter().expect("shipped adapter");
    let enc = base();
    assert_eq!(adapter.base_identity(), enc.identity(), "trained on the MiniLM the asset cache installs");
    let trained = base().with_adapter(&adapter).expect("apply");
    assert_eq!(trained.identity(), adapter.identity_on(enc.identity()));
    assert!(max_diff(&embed(&enc), &embed(&trained)) > 1e-3, "the shipped LoRA is not a no-op");
    // The zoo shipped with the project is embedded by it (and so refuses the untrained encoder).
    let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../zoo/pool");
    let (pool, skipped) = ramole_retriever::LoraPool::open(&zoo).expect("the shipped zoo");
    assert!(skipped.is_empty());
    pool.check_encoder(&trained).expect("the zoo is embedded by the default retriever");
    assert!(matches!(pool.check_encoder(&enc), Err(RetrieverError::EncoderMismatch { .. })));
}
