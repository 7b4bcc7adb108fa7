//! The tokenizer rebuilt from the real SmolLM2 GGUF against llama.cpp's token ids.

use std::path::PathBuf;

use ramole_assets::AssetCache;
use ramole_models::gguf::GgufFile;
use ramole_models::tokenizer::{chatml_prompt, decode, encode, from_gguf};

#[test]
fn smollm2_tokenizer_matches_llama_cpp_on_every_fixture_prompt() {
    let cache = AssetCache::from_env().expect("asset cache").quiet(true);
    let file = GgufFile::open(cache.smollm2_gguf().expect("SmolLM2 GGUF")).expect("parse GGUF");
    let tok = from_gguf(&file).expect("tokenizer");
    assert_eq!(tok.get_vocab_size(true), 49152);

    let cases = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/smollm2/cases.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&cases).expect("cases.json")).expect("json");
    let mut checked = 0;
    for case in json["cases"].as_array().expect("cases") {
        let (Some(prompt), Some(ids)) = (case["prompt"].as_str(), case["token_ids"].as_array()) else { continue };
        let want: Vec<u32> = ids.iter().map(|v| v.as_u64().expect("id") as u32).collect();
        let got = encode(&tok, prompt).expect("encode");
        assert_eq!(got, want, "case {}: {prompt:?}", case["name"]);
        assert_eq!(decode(&tok, &got).expect("decode"), prompt, "case {} round trip", case["name"]);
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} cases checked");

    let chat = encode(&tok, &chatml_prompt("Hi")).expect("encode chat");
    let count = |id: u32| chat.iter().filter(|&&t| t == id).count();
    assert_eq!((chat[0], count(1), count(2)), (1, 2, 1), "<|im_start|> and <|im_end|> are single tokens: {chat:?}");
    assert_eq!(chat.last(), Some(&198), "ends with a newline token");
}
